"""Spread batch work over the machine's cores, with bounded memory and results in input order.

Workers are forked: they start in milliseconds with every module (Great Expectations takes seconds
to import) already loaded. Python re-creates logging's locks and Arrow its thread pool after a fork,
and the workers only run pure data functions, so the parent's threads are not needed there.
Where fork does not exist, a fork server is used instead.

A worker first freezes the objects it inherited (`gc.freeze`), as Python's documentation advises for a fork without
exec: its garbage collector then never walks the parent's heap (hundreds of thousands of objects once Great Expectations is
loaded), which would stall a batch at each full collection and copy every page it touched.
"""

import gc
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def process_pool(workers: int) -> Executor | None:
    """A pool of `workers` processes, or None to run everything in this process."""
    if workers <= 1:
        return None
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "forkserver"
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=gc.freeze)


def ordered_map(pool: Executor | None, function: Callable[[Item], Result], items: Iterable[Item], in_flight: int) -> Iterator[Result]:
    """Like map(), but at most `in_flight` items are submitted and not yet consumed."""
    if pool is None:
        yield from map(function, items)
        return
    pending: deque[Future[Result]] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
