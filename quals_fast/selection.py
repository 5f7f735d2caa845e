"""QUALS's choice of question-answer pairs among the generated candidates.

The original (``filter_qas_dataset_lm_score``, default path) keeps a candidate
``question<sep>answer`` when its answer, lower-cased, occurs in the lower-cased summary, then takes
the survivors round-robin over distinct answers, best unnormalised score first. The work is done
by the compiled core; this module validates input and shapes the result. Importing it fails
with the rebuild command when the core's Unicode case tables do not match this interpreter.

Input rules (decided here, the reference has none):

- ``summary`` and every candidate's ``text`` must be ``str`` (``TypeError`` otherwise) that
  UTF-8 can carry, i.e. without lone surrogates (``ValueError``);
- ``score`` and ``unnormalized_score`` must be real numbers (anything ``float()`` takes except
  ``bool`` and strings);
- ``unnormalized_score`` must not be NaN (``ValueError``): it decides the order, and the
  reference's sort has no defined order with NaN. ``score`` is only carried into the result, so
  NaN is allowed there. Infinities are allowed in both.
"""
import numbers
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, List, Optional

from quals_fast._native import REBUILD, BuildError, core

DEFAULT_SEPARATOR = core.default_separator
_FIELDS = ("text", "score", "unnormalized_score")


@dataclass(frozen=True)
class QAPair:
    """A kept pair. ``index`` is the candidate's position in the list given to the selection."""

    question: str
    answer: str
    score: float
    unnormalized_score: float
    index: int


@dataclass(frozen=True)
class SelectionOptions:
    """Settings of the selection.

    ``max_pairs``: pairs wanted. The reference checks it only before each round, so a round can
    overshoot it; ``strict_cap=True`` stops at exactly ``max_pairs``. ``separator``: the string
    between question and answer, ``None`` for the reference's ``" strutConnector"``.
    """

    max_pairs: int = 10
    strict_cap: bool = False
    separator: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.max_pairs, bool) or not isinstance(self.max_pairs, numbers.Integral):
            raise TypeError("max_pairs must be an int, got %r" % (self.max_pairs,))
        if self.max_pairs < 1:
            raise ValueError("max_pairs must be at least 1, got %d" % self.max_pairs)
        object.__setattr__(self, "max_pairs", int(self.max_pairs))
        if not isinstance(self.strict_cap, bool):
            raise TypeError("strict_cap must be a bool, got %r" % (self.strict_cap,))
        if self.separator is not None:
            if not isinstance(self.separator, str):
                raise TypeError("separator must be a str, got %r" % (self.separator,))
            if not self.separator:
                raise ValueError("separator must not be empty")

    @property
    def sep(self) -> str:
        return DEFAULT_SEPARATOR if self.separator is None else self.separator


def _check_unicode_version():
    # The case tables are compiled in; a build from a Python with other Unicode data would
    # lower-case differently from this interpreter and silently change which answers match.
    if core.unicode_version != unicodedata.unidata_version:
        raise BuildError(
            "quals_fast._core was built with Unicode %s case tables but this Python uses Unicode %s, "
            "so its lower-casing would differ from str.lower(). Rebuild with:\n    %s"
            % (core.unicode_version, unicodedata.unidata_version, REBUILD)
        )


_check_unicode_version()


def _field(candidate, position, name):
    if isinstance(candidate, Mapping):
        if name in candidate:
            return candidate[name]
    elif hasattr(candidate, name):
        return getattr(candidate, name)
    raise TypeError("candidate %d has no %r (candidates need %s)" % (position, name, ", ".join(_FIELDS)))


def _real(value, position, name):
    # float() also takes numpy and torch scalars, but would parse strings and accept bools.
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError("candidate %d: %s must be a real number, got %r" % (position, name, value))


def _utf8(text, what):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("%s cannot be encoded as UTF-8 (%s)" % (what, exc.reason)) from None


def select_qa_pairs(
    candidates: Iterable[Any],
    summary: str,
    max_pairs: int = 10,
    sep: str = DEFAULT_SEPARATOR,
    strict_cap: bool = False,
    *,
    separator: Optional[str] = None,
) -> List[QAPair]:
    """Pairs that QUALS keeps for ``summary``, in the order the original keeps them.

    ``candidates`` are objects or mappings with ``text`` (``question<sep>answer``), ``score``
    (normalised) and ``unnormalized_score``. ``separator`` is the ``SelectionOptions`` spelling of
    ``sep``, so ``select_qa_pairs(c, s, **dataclasses.asdict(options))`` works; give one or the other.
    """
    if separator is not None and sep != DEFAULT_SEPARATOR and sep != separator:
        raise TypeError("give the separator once: sep=%r and separator=%r differ" % (sep, separator))
    options = SelectionOptions(max_pairs=max_pairs, strict_cap=strict_cap,
                               separator=sep if separator is None else separator)
    if not isinstance(summary, str):
        raise TypeError("summary must be a str, got %s" % type(summary).__name__)
    if isinstance(candidates, (str, bytes, Mapping)) or not isinstance(candidates, Iterable):
        raise TypeError("candidates must be an iterable of candidates, got %s" % type(candidates).__name__)

    # The core takes UTF-8 bytes, so encoding here both reports bad text clearly and spares it
    # a second encoding.
    texts, scores, unnormalized = [], [], []
    for position, candidate in enumerate(candidates):
        text = _field(candidate, position, "text")
        if not isinstance(text, str):
            raise TypeError("candidate %d: text must be a str, got %s" % (position, type(text).__name__))
        texts.append(_utf8(text, "candidate %d's text" % position))
        scores.append(_real(_field(candidate, position, "score"), position, "score"))
        unnormalized.append(_real(_field(candidate, position, "unnormalized_score"), position, "unnormalized_score"))

    kept = core.select_qa_pairs(texts, unnormalized, _utf8(summary, "summary"), _utf8(options.sep, "sep"),
                                   options.max_pairs, options.strict_cap)
    return [QAPair(question=q, answer=a, score=scores[i], unnormalized_score=unnormalized[i], index=i)
            for i, q, a in kept]
