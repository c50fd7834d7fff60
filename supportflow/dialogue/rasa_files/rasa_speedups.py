"""Rasa 3.6 validates every action server response with `jsonschema.validate`, which first checks Rasa's
own constant response schema against the JSON Schema metaschema. Measured with py-spy on a served bot,
that re-check was 30% of a whole turn. This validates against the same schema, with a validator built once:
the same responses pass and fail, with the same message.

Runs inside Rasa's Python 3.10 environment (copied into the generated project, installed by the NLU component).
"""

from typing import Any, Dict, Text

from jsonschema import ValidationError, validators
from rasa.core.actions.action import DOCS_BASE_URL, RemoteAction

_validator = None


def _validate_action_result(self: RemoteAction, result: Dict[Text, Any]) -> bool:
    global _validator
    if _validator is None:
        schema = RemoteAction.action_response_format_spec()
        _validator = validators.validator_for(schema)(schema)
    try:
        _validator.validate(result)
        return True
    except ValidationError as error:
        error.message += (
            ". Failed to validate Action server response from API, make sure your response from the Action endpoint is valid. "
            f"For more information about the format visit {DOCS_BASE_URL}/custom-actions"
        )
        raise error


def install() -> None:
    RemoteAction._validate_action_result = _validate_action_result
