"""Display text and match keys.

Two outputs from one pipeline: the display text keeps the publisher's wording (markup
removed, whitespace tidied); the match key folds every spelling variation that should not
change a match (Arabic/Persian letters, diacritics, kashida, ZWNJ, digits, Latin case), and
is used on both sides, keywords and item text, so the two always agree.
"""

from __future__ import annotations

import html
import re
import unicodedata

ZWNJ = "\u200c"
_TAG = re.compile(r"<[^>]{0,2000}>")
_BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/li|/h\d|/tr)\b[^>]{0,200}>", re.IGNORECASE)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_NEWLINES = re.compile(r"\s*\n\s*")

# Letters folded to their Persian form. NFKC (applied first) already maps the Arabic
# presentation forms (U+FB50-U+FEFF) to these base letters.
_LETTERS = str.maketrans({
    "\u064a": "\u06cc",  # ي Arabic yeh -> ی
    "\u0649": "\u06cc",  # ى alef maksura -> ی
    "\u06d2": "\u06cc",  # ے yeh barree -> ی
    "\u0643": "\u06a9",  # ك Arabic kaf -> ک
    "\u06aa": "\u06a9",  # ڪ swash kaf -> ک
    "\u0629": "\u0647",  # ة teh marbuta -> ه
    "\u06c0": "\u0647",  # ۀ heh with yeh -> ه
    "\u06c1": "\u0647",  # ہ heh goal -> ه
    "\u06d5": "\u0647",  # ە ae -> ه
    "\u0623": "\u0627",  # أ -> ا
    "\u0625": "\u0627",  # إ -> ا
    "\u0622": "\u0627",  # آ -> ا
    "\u0671": "\u0627",  # ٱ alef wasla -> ا
    "\u0624": "\u0648",  # ؤ -> و
    "\u0626": "\u06cc",  # ئ -> ی
    ZWNJ: " ",
    "\u200d": "",        # ZWJ
    "\u0640": "",        # kashida
    "\u200e": "", "\u200f": "", "\u202a": "", "\u202b": "", "\u202c": "",
    "\u202d": "", "\u202e": "", "\u2066": "", "\u2067": "", "\u2068": "", "\u2069": "",
    "\ufeff": "",
})
# Persian (U+06F0..) and Arabic-Indic (U+0660..) digits -> ASCII.
_DIGITS = str.maketrans({**{chr(0x06F0 + i): str(i) for i in range(10)},
                         **{chr(0x0660 + i): str(i) for i in range(10)}})
# Harakat, tanwin, shadda, sukun, superscript alef, Quranic marks.
_DIACRITICS = re.compile(r"[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]")
# Everything that is not a letter or digit separates words in the key.
_NON_WORD = re.compile(r"[^\w]+")
_PERSIAN_ARABIC = re.compile(r"[\u0600-\u06ff\ufb50-\ufdff\ufe70-\ufeff]")
_ARABIC_ONLY = re.compile(r"[\u0629\u0643\u064a\u0649\u0621\u0623\u0625]")
_PERSIAN_ONLY = re.compile(r"[\u067e\u0686\u0698\u06af\u06a9\u06cc]")


def strip_markup(raw: str) -> str:
    """HTML to plain text: scripts dropped, tags removed, entities decoded."""
    text = _SCRIPT.sub(" ", raw)
    text = _BLOCK_TAG.sub("\n", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


def display_text(raw: str | None) -> str:
    """What a person reads: the publisher's wording, markup removed, whitespace tidied."""
    if not raw:
        return ""
    text = strip_markup(raw) if "<" in raw or "&" in raw else raw
    text = text.replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    return text.strip()


def match_key(text: str | None) -> str:
    """The folded form used for matching and exact-duplicate detection; never shown."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_LETTERS).translate(_DIGITS)
    text = _DIACRITICS.sub("", text)
    text = text.casefold()
    text = _NON_WORD.sub(" ", text)
    return text.strip()


def detect_language(text: str) -> str | None:
    """A coarse script-based guess: 'fa', 'ar', 'en'/'fr' (Latin) or None."""
    sample = text[:2000]
    arabic_script = len(_PERSIAN_ARABIC.findall(sample))
    latin = sum(1 for ch in sample if "a" <= ch.lower() <= "z")
    if arabic_script == 0 and latin == 0:
        return None
    if arabic_script >= latin:
        persian = len(_PERSIAN_ONLY.findall(sample))
        arabic = len(_ARABIC_ONLY.findall(sample))
        return "ar" if arabic > persian else "fa"
    french = len(re.findall(r"[éèêàçôù]|\b(?:le|la|les|des|du|et|pour)\b", sample.lower()))
    return "fr" if french >= 3 else "en"


def is_right_to_left(text: str) -> bool:
    return detect_language(text) in ("fa", "ar")
