"""Training shows its progress: every optimiser step moves the bar, every logged loss shows beside it."""

from transformers import TrainerControl, TrainerState, TrainingArguments

from supportflow import progress
from supportflow.classifier.fine_tune import TrainingProgress
from supportflow.progress import bars


def test_each_step_moves_the_fine_tune_bar_and_the_loss_shows_beside_it(tmp_path: object) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, report_to="none", use_cpu=True)
    state, control = TrainerState(max_steps=4), TrainerControl()
    callback = TrainingProgress()
    with bars(enabled=True):
        callback.on_train_begin(args, state, control)
        for step in range(1, 4):
            state.global_step, state.epoch = step, step / 2
            callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": 1.234})
        shown = progress._bars
        assert shown is not None
        (task,) = shown.tasks
        assert (task.description, task.completed, task.total) == ("fine-tune", 3, 4)
        assert task.fields["detail"] == "epoch 1.50/2, loss 1.234"
        callback.on_train_end(args, state, control)
