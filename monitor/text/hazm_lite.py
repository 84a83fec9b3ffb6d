"""hazm's Normalizer without the rest of hazm.

`import hazm` runs hazm's package `__init__`, which imports every tool hazm has (its POS
taggers, chunkers, parsers and embeddings) and with them all of NLTK (through NLTK's own
package `__init__`), scikit-learn, SciPy, gensim, fastText and python-crfsuite: about
125 MB of a daemon's memory and 0.7 s of its start. monitor uses one class of hazm, the
Normalizer, which needs five of hazm's modules and two abstract base classes of NLTK:
about 15 MB.

`load()` imports just those. The packages `hazm`, `nltk`, `nltk.tokenize` and `nltk.stem`
are registered bare (created from their specs, their `__init__` not run), so importing a
module inside them loads that module alone; then the names hazm's modules import from
`hazm` are set on it, each before the module that needs it is imported. In a process that
loaded it so, `hazm` and `nltk` hold those modules only (and any other module of theirs
imported by name): monitor is that process's only user of either, and the tests ask hazm
for nothing more.

This depends on which modules hazm's normalizer imports, hence the exact pin on hazm
(pyproject.toml); tests/test_normalize.py compares `PersianNormalizer`'s output with a
plain `hazm.Normalizer`, and tests/test_hazm_lite.py checks what a daemon process imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

# (module, its names that hazm's other modules or monitor import from `hazm`), in the order
# hazm's modules need them.
_HAZM_MODULES = (
    ("hazm.utils", ("default_verbs", "default_words", "words_list", "maketrans",
                    "regex_replace", "abbreviations")),
    ("hazm.stemmer", ("Stemmer",)),
    ("hazm.word_tokenizer", ("WordTokenizer",)),
    ("hazm.lemmatizer", ("Lemmatizer", "Conjugation")),
    ("hazm.normalizer", ("Normalizer",)),
)
# Packages whose `__init__` would import far more than the modules above need.
_BARE_PACKAGES = ("nltk", "nltk.tokenize", "nltk.stem", "hazm")

_lock = threading.Lock()


def load() -> ModuleType:
    """The `hazm` package with its Normalizer and what it needs: the real, whole package
    when something in this process imported it already, else a bare one (module docstring).
    """
    with _lock:
        if "hazm" in sys.modules:
            return sys.modules["hazm"]
        registered = [name for name in _BARE_PACKAGES if name not in sys.modules]
        try:
            for name in registered:
                _register_bare(name)
            hazm = sys.modules["hazm"]
            for module_name, names in _HAZM_MODULES:
                module = importlib.import_module(module_name)
                for name in names:
                    hazm.__dict__.setdefault(name, getattr(module, name))
        except Exception:
            # A hazm this does not fit: no half-made packages left behind for the next import.
            for name in registered:
                sys.modules.pop(name, None)
            raise
        return hazm


def _register_bare(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    package = importlib.util.module_from_spec(spec)  # __path__, __spec__; __init__ not run
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)
