"""The errors a job reports to its user: one line each, ``<what>: <why> (<what to do>)``.

Library code raises :class:`JobError` (or its subclass ``ConfigError``) for every mistake a user can fix:
bad input, a missing dataset or model, a service that cannot be reached. The job entry point
(``rsvlm.config.hydra_main``) prints ``error: `` + that line and exits non-zero; a traceback is printed only
with ``RSVLM_DEBUG=1``. Nothing here imports the rest of rsvlm but ``rsvlm.redaction`` (which imports none), so
every layer may raise these.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from rsvlm.redaction import mask_url_credentials

# Set to 1 to get the full traceback of a failed job after its one-line error.
DEBUG_ENV = "RSVLM_DEBUG"


class JobError(RuntimeError):
    """A job cannot go on. ``str()`` is one line: ``<what>: <why> (<what to do>)``.

    ``what`` names the thing (a file and line, a config key, a model URI), ``why`` the problem, ``fix``
    what the user can do about it (a command to run, a setting to change); it may be omitted.
    """

    exit_code = 1

    def __init__(self, what: str, why: str, fix: Optional[str] = None):
        self.what, self.why, self.fix = str(what), str(why), fix
        line = f"{self.what}: {self.why}"
        if fix:
            line += f" ({fix})"
        super().__init__(" ".join(line.split("\n")))

    def __reduce__(self):
        # Ray ships exceptions between processes by pickling; keep the three parts.
        return (type(self), (self.what, self.why, self.fix))


class ConfigError(JobError, ValueError):
    """A configuration value is invalid: names the key, the problem and the valid choices (exit code 2)."""

    exit_code = 2

    def __init__(self, key: str, problem: str, choices: Optional[Iterable[Any]] = None):
        self.key = key
        self.problem = problem
        self.choices = [str(c) for c in choices] if choices is not None else None
        super().__init__(key, problem, f"choices: {', '.join(self.choices)}" if self.choices else None)

    def __reduce__(self):
        return (type(self), (self.key, self.problem, self.choices))


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything behind it, nearest first: ``__cause__``/``__context__`` chains and the errors that
    Ray's wrappers carry (a task's ``cause``, Ray Train's ``worker_failures`` and ``controller_failure``)."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        err = pending.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        inner = [getattr(err, "cause", None), getattr(err, "controller_failure", None),
                 *(getattr(err, "worker_failures", None) or {}).values(), err.__cause__, err.__context__]
        pending.extend(e for e in inner if isinstance(e, BaseException))


def as_job_error(exc: BaseException) -> JobError:
    """The one-line error a user should read for ``exc``: the :class:`JobError` behind it, else a description
    of the innermost error (with the hint to rerun with ``RSVLM_DEBUG=1``)."""
    chain = list(causes(exc))
    for err in chain:
        # Ray re-raises a worker's error as a class that is both RayTaskError and the error's own type, whose
        # text is the remote traceback: the error itself is its ``cause``.
        if isinstance(err, JobError) and not isinstance(getattr(err, "cause", None), JobError):
            return err
    for err in chain:
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) \
                and getattr(err, "filename", None):
            return JobError(mask_url_credentials(str(err.filename)), err.strerror or type(err).__name__)
    # The innermost error says what went wrong; the wrappers around it only where it surfaced.
    root = chain[-1]
    message = next((line.strip() for line in str(root).splitlines() if line.strip()), "")
    return JobError(type(root).__name__, mask_url_credentials(message[:500]) or "no message",
                    f"unexpected; rerun with {DEBUG_ENV}=1 for the traceback")
