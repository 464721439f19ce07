"""The default extractor: deterministic, offline, plain regular expressions.

How a transcript becomes memories:

1. Only the user's turns are read: what the assistant says about itself, or
   suggests, is not a fact about the user.
2. Each turn is cut into sentences, and each sentence into clauses ("I'm
   vegetarian and my husband doesn't eat red meat" holds two facts).
3. Each clause is normalised: fillers dropped ("Oh, and ..."), contractions
   expanded ("I'm" -> "I am"), "we" read as the user ("we're moving" -> "I am
   moving"), and "he"/"she"/"her"/a first name resolved to the family member
   or pet the user last introduced ("my son Leo" ... "he is three").
4. The clause is matched against RULES, an ordered table: the first rule that
   matches decides. A rule either drops the clause (questions, small talk,
   hedges, remarks about the assistant, passing states such as "I'm tired") or
   keeps it with a kind, a category and an importance. A clause no rule keeps
   is not durable enough to remember.
5. A kept clause is rewritten in the third person: "I prefer window seats" ->
   "User prefers window seats", "my wife is called Anna" -> "User's wife is
   called Anna"; later first-person words become they/their/them.

The summary is extractive: the transcript's most central sentences by
embedding similarity (see `summarize`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from memories.embedding import Embedder, EmbeddingError, get_embedder
from memories.extraction import ExtractedMemory, Extraction, ExtractionUnavailable, Message

__all__ = ["RULES", "Rule", "RuleExtractor", "split_sentences", "summarize", "to_third_person"]

# -- vocabulary -------------------------------------------------------------------------------------


def _words(*lines: str) -> frozenset[str]:
    return frozenset(word for line in lines for word in line.split())


# Adverbs that may sit between "I" and its verb ("I really like", "I never eat"):
# the verb after them is the one that takes the third-person ending.
_ADVERBS = (
    "really|also|usually|always|never|often|generally|actually|just|still|absolutely|mostly|definitely|"
    "normally|typically|honestly|totally|only|even|currently|already|now|mainly|strongly|rarely|sometimes|"
    "seriously|truly|basically|probably|recently|finally|literally|kind of|sort of|pretty much|much|"
    "no longer|hardly ever|almost never|almost always|barely|occasionally|regularly|"
    "genuinely|personally|simply|especially"
)
ADV = rf"(?:(?:{_ADVERBS})\s+)*"

_FEMALE = (
    "wife|girlfriend|fiancée|fiancee|daughter|sister|mom|mum|mother|mommy|mama|grandma|grandmother|granny|aunt|"
    "niece|stepmom|stepmother|stepdaughter|mother-in-law|sister-in-law|daughter-in-law|stepsister"
)
_MALE = (
    "husband|boyfriend|fiancé|fiance|son|brother|dad|father|daddy|papa|grandpa|grandfather|uncle|nephew|stepdad|"
    "stepfather|stepson|father-in-law|brother-in-law|son-in-law|stepbrother"
)
_NEUTRAL_FAMILY = (
    "partner|spouse|youngest|oldest|eldest|middle child|little ones?|kids?|children|child|baby|babies|toddlers?|"
    "teenagers?|teens?|twins|siblings?|parents|"
    "grandparents|grandchildren|grandkids|cousins?|in-laws|family|stepkids|stepchildren"
)
_PETS = "dogs?|cats?|puppy|puppies|kittens?|pets?|parrot|bird|rabbit|bunny|hamster|horse|tortoise|turtle|guinea pig"
_PEOPLE = (
    "boss|manager|coworkers?|co-workers?|colleagues?|friends?|best friend|roommate|flatmate|neighbou?rs?|"
    "landlord|landlady|teacher|doctor|therapist|dentist|coach|mentor|assistant|team|clients?"
)
REL = rf"(?:{_FEMALE}|{_MALE}|{_NEUTRAL_FAMILY})"
# What may stand between "my" and the relation: "my little", "my 6 year old", "my two-year-old".
_MODIFIER = (
    r"(?:(?:little|big|older|younger|eldest|oldest|youngest|best|new|old|two|three|four|step|twin|"
    r"\d+(?:[- ](?:year|month|week)s?[- ]old)?|\w+-(?:year|month)-old|(?:year|month)s? old) )*"
)
# "my son Leo", "my fiancé Marco", "my dog Biscuit": a relation followed by a capitalised name.
_NAMED = re.compile(
    rf"\b[Mm]y {_MODIFIER}"
    rf"(?P<rel>{_FEMALE}|{_MALE}|{_NEUTRAL_FAMILY}|{_PETS}|{_PEOPLE})"
    r"(?:,)? (?P<name>(?:Mr\.|Mrs\.|Ms\.|Dr\.) [A-Z][a-z]+|[A-Z][a-z]+)\b"
)
_GENDER = {
    **dict.fromkeys(_FEMALE.split("|"), "f"),
    **dict.fromkeys(_MALE.split("|"), "m"),
}

_NATIONALITIES = (
    "American|British|English|Scottish|Welsh|Irish|Canadian|Australian|Mexican|Brazilian|Argentinian|Chilean|"
    "Colombian|Peruvian|Spanish|Portuguese|French|German|Italian|Dutch|Belgian|Swiss|Austrian|Polish|Czech|"
    "Swedish|Norwegian|Danish|Finnish|Icelandic|Greek|Turkish|Russian|Ukrainian|Romanian|Hungarian|Israeli|"
    "Egyptian|Moroccan|Nigerian|Kenyan|Ethiopian|South African|Indian|Pakistani|Bangladeshi|Chinese|Japanese|"
    "Korean|Vietnamese|Thai|Filipino|Indonesian|Malaysian|Singaporean|Iranian|Iraqi|Lebanese|Syrian|Kiwi|"
    "Jewish|Muslim|Christian|Catholic|Hindu|Buddhist|Atheist|Vegan|Vegetarian|Pescatarian|Diabetic|Celiac"
)
_LANGUAGES = (
    "english|spanish|french|german|italian|portuguese|chinese|mandarin|cantonese|japanese|korean|russian|arabic|"
    "hindi|urdu|bengali|dutch|polish|swedish|norwegian|danish|finnish|turkish|greek|hebrew|ukrainian|czech|"
    "vietnamese|thai|tagalog|swahili|farsi|persian|sign language|asl|bsl"
)
_HEALTH = (
    r"allerg\w*|intoleran\w*|asthma|diabetes|adhd|add|autism|epilepsy|arthritis|migraines?|blood pressure|"
    r"hypertension|anxiety|depression|coeliac|celiac|eczema|psoriasis|hay fever|insomnia|sleep apnea|ibs|"
    r"crohn'?s|colitis|condition|disorder|disease|injur\w*|cancer|heart \w+|(?:bad|weak|injured|dodgy) "
    r"(?:\w+ )?(?:back|knee|hip|shoulder|ankle|leg|wrist|neck)|(?:back|knee|hip|joint|neck|chronic) "
    r"(?:pain|problems?|issues?)|tinnitus|dyslexia|ptsd|ocd|pcos|endometriosis|thyroid \w+|high cholesterol"
)
_MEDS = (
    r"medication|meds|medicine|insulin|pills|an? inhaler|antidepressants|blood thinners|statins|antihistamines|"
    r"birth control|vitamins|supplements"
)
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
_DAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
# A time reference that turns "I'll go" from a reaction into a plan.
_WHEN = (
    rf"\b(?:tomorrow|tonight|next \w+|this (?:week|weekend|month|year|summer|winter|spring|fall|autumn)|"
    rf"(?:on |this |next )?(?:{_DAYS})|(?:in |early |late |mid-?)?(?:{_MONTHS})|in \d+ \w+|"
    rf"in (?:a|two|three|a few|several) (?:days?|weeks?|months?|years?)|at (?:christmas|easter|thanksgiving)|"
    rf"soon|someday|one day|later this \w+|the (?:end|beginning|start|middle) of|\d{{1,2}}(?:st|nd|rd|th))"
)
_TRAVEL_THINGS = (
    "flights?|trip|hotel|hostel|airbnb|holiday|vacation|honeymoon|getaway|cruise|room|tickets?|train|car rental"
)
_COUNT = r"(?:a|an|one|two|three|four|five|six|seven|eight|nine|ten|\d+|no|twin|several|a few)"

# Base forms that may follow "and" with the subject left out ("I'm a night
# owl and prefer meetings after 11am"): the clause is split and the subject repeated.
_ELLIPTIC_VERBS = (
    "prefer|like|love|hate|enjoy|work|live|have|need|want|use|speak|eat|drink|run|play|read|write|cook|teach|"
    "study|struggle|take|avoid|own|drive|dislike|adore|am|spend|volunteer|coach|train|practi[cs]e|start|go|get|"
    "attend|carry|care|help|walk|swim|sleep|visit|stay|plan|hope|suffer"
)


# -- third person -----------------------------------------------------------------------------------

_UNCHANGED_VERBS = _words(
    "can can't cannot could couldn't will won't would wouldn't should shouldn't must mustn't might may",
    "shall was wasn't used got grew went had did made bought found lost took left ran saw spent met broke",
    "came became began fell felt kept knew led sold sent told thought won wrote quit hurt put cut set",
    "gave flew drove ate drank sat stood slept taught brought caught fought heard paid said swam wore",
    "tore sprained",
)
_IRREGULAR_VERBS = {
    "am": "is",
    "are": "is",
    "were": "was",
    "weren't": "wasn't",
    "have": "has",
    "haven't": "hasn't",
    "do": "does",
    "don't": "doesn't",
    "go": "goes",
    "aren't": "isn't",
}
_VOWELS = frozenset("aeiou")
# Base forms that end in "ed" like a past tense.
_BASE_ENDING_IN_ED = _words(
    "need feed bleed breed speed proceed succeed exceed shed wed embed heed weed seed shred",
)


def third_person_verb(verb: str) -> str:
    """The form of `verb` after "User" ("prefer" -> "prefers", "am" -> "is", "don't" -> "doesn't")."""
    lower = verb.lower()
    if lower in _IRREGULAR_VERBS:
        return _IRREGULAR_VERBS[lower]
    if lower in _UNCHANGED_VERBS or not lower.isalpha() or (lower.endswith("ed") and lower not in _BASE_ENDING_IN_ED):
        return verb
    if lower.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in _VOWELS:
        return verb[:-1] + "ies"
    return verb + "s"


_LATER_FIRST_PERSON = {
    "i": "they",
    "my": "their",
    "me": "them",
    "mine": "theirs",
    "myself": "themselves",
    "you": "the assistant",
    "your": "the assistant's",
    "yours": "the assistant's",
    "yourself": "the assistant",
}
# After a later "I" became "they", its verb agrees with "they".
_THEY_VERBS = {"am": "are", "was": "were", "wasn't": "weren't", "has": "have", "does": "do", "doesn't": "don't"}


def _later_person(text: str) -> str:
    """First- and second-person words after the subject: I -> they, my -> their, me -> them, you -> the assistant."""
    words = text.split(" ")
    out: list[str] = []
    after_they = False
    for word in words:
        core = word.rstrip(".,;:!?)\"'")
        tail = word[len(core) :]
        lower = core.lower()
        if after_they and lower in _THEY_VERBS:
            out.append(_THEY_VERBS[lower] + tail)
            after_they = False
            continue
        after_they = False
        if lower in _LATER_FIRST_PERSON:
            out.append(_LATER_FIRST_PERSON[lower] + tail)
            after_they = lower == "i"
        else:
            out.append(word)
    return " ".join(out)


_SUBJECT_I = re.compile(rf"^I\s+(?P<adverbs>{ADV})(?P<verb>[A-Za-z']+)\b(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_SUBJECT_MY = re.compile(r"^my\b(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
_PLEASE = re.compile(r"^please\s+(?:(?:do not|don't)\s+(?P<neg>.+)|(?P<pos>.+))$", re.IGNORECASE | re.DOTALL)


def to_third_person(clause: str) -> str:
    """A first-person statement about the user, rewritten about "User".

    "I prefer window seats" -> "User prefers window seats"; "my wife is called
    Anna" -> "User's wife is called Anna"; "please always answer in English" ->
    "User wants the assistant to always answer in English"; first-person words
    after the subject become they/their/them.
    """
    text = normalize(clause)
    match = _PLEASE.match(text)
    if match:
        action = f"not {match.group('neg')}" if match.group("neg") else match.group("pos")
        return _finish("User wants the assistant to " + _later_person(action))
    match = _SUBJECT_I.match(text)
    if match:
        adverbs = match.group("adverbs")
        verb = third_person_verb(match.group("verb"))
        return _finish(f"User {adverbs}{verb}{_later_person(match.group('rest'))}")
    match = _SUBJECT_MY.match(text)
    if match:
        return _finish("User's" + _later_person(match.group("rest")))
    return _finish(_later_person(text))


def _finish(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;:-")
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = text.rstrip(".!;:,")
    return text[:1].upper() + text[1:]


# -- normalisation ----------------------------------------------------------------------------------

_CONTRACTIONS = [
    (re.compile(r"\bi'm\b|\bim\b", re.IGNORECASE), "I am"),
    (re.compile(r"\bi've\b|\bive\b", re.IGNORECASE), "I have"),
    (re.compile(r"\bi'd\b", re.IGNORECASE), "I would"),
    (re.compile(r"\bi'll\b", re.IGNORECASE), "I will"),
    (re.compile(r"\bi\b"), "I"),
    (re.compile(r"\bdont\b", re.IGNORECASE), "don't"),
    (re.compile(r"\bcant\b", re.IGNORECASE), "can't"),
    (re.compile(r"\bdoesnt\b", re.IGNORECASE), "doesn't"),
    # The user speaks for the household: "we" is the user, "our" is theirs.
    (re.compile(r"\bwe're\b|\bwe are\b", re.IGNORECASE), "I am"),
    (re.compile(r"\bwe were\b", re.IGNORECASE), "I was"),
    (re.compile(r"\bwe've\b", re.IGNORECASE), "I have"),
    (re.compile(r"\bwe'd\b", re.IGNORECASE), "I would"),
    (re.compile(r"\bwe'll\b", re.IGNORECASE), "I will"),
    (re.compile(r"\bwe\b", re.IGNORECASE), "I"),
    (re.compile(r"\bour\b", re.IGNORECASE), "my"),
    (re.compile(r"\bours\b", re.IGNORECASE), "mine"),
    (re.compile(r"\bourselves\b", re.IGNORECASE), "myself"),
    # "US" is the country; only the lower-case pronoun is "me".
    (re.compile(r"\b[Uu]s\b"), "me"),
    (re.compile(r"\bI am are\b"), "I am"),
]
# "My wife and I are moving", "Marco and I": the pair speaks as "we".
_PAIR_SUBJECT = re.compile(
    rf"\bmy {_MODIFIER}(?:{REL}|{_PETS}|{_PEOPLE})(?: (?-i:[A-Z][a-z]+))? and I\b|^(?-i:[A-Z][a-z]+) and I\b",
    re.IGNORECASE,
)
# Repeated in one pass ("oh, and also, ..."): a loop that strips one at a time is quadratic on junk input.
_LEADING_FILLER = re.compile(
    r"^(?:(?:oh|ah|well|so|also|and|but|yeah|yes|yep|yup|no|nope|nah|ok|okay|k|actually|anyway|anyways|btw|"
    r"by the way|just so you know|fyi|for the record|honestly|basically|plus|hmm+|um+|uh+|ha(?:ha)+|lol|"
    r"great|nice|cool|perfect|sure|right|alright|then again|in fact|to be honest|tbh|sounds good|good idea|"
    r"got it|again|besides|oh and|oh also|since|because|as|now that|given that|just|hey|hi|hello|wow|"
    r"notes? for the assistant|for context|background|fun fact|note)\b[\s,!.:;\-]*)+",
    re.IGNORECASE,
)
_TRAILING_FILLER = re.compile(
    r"(?:[\s,]*\b(?:by the way|btw|though|anyway|anyways|lol|ha(?:ha)+|honestly|tbh|too|as well|haha|"
    r"just so you know|fyi|if that helps|if that matters|for what it's worth)\s*[.!]*)+$",
    re.IGNORECASE,
)
_INNER_THOUGH = re.compile(r"\s+though\b(?=\s*[,.!;]|$)", re.IGNORECASE)
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f]+")


# Phones type curly apostrophes (U+2019): they must read as the straight one.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def normalize(clause: str) -> str:
    text = _EMOJI.sub("", clause).translate(_APOSTROPHES).strip()
    text = _PAIR_SUBJECT.sub("we", text)
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _LEADING_FILLER.sub("", text).strip()
    text = _TRAILING_FILLER.sub("", text).strip()
    text = _INNER_THOUGH.sub("", text)
    return re.sub(r"\s+", " ", text).strip(" ,;:-").rstrip(".!…").strip()


# -- sentences and clauses --------------------------------------------------------------------------

_ABBREVIATIONS = _words(
    "mr mrs ms dr st jr sr prof vs etc e.g i.e approx no dept est fig inc ltd co mt ave a.m p.m u.s u.k",
)
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a turn: lines, then sentence ends (not after "Dr." or "e.g.")."""
    sentences: list[str] = []
    for raw_line in text.splitlines():
        line = _BULLET.sub("", raw_line).strip()
        if not line:
            continue
        start = 0
        for match in _SENTENCE_END.finditer(line):
            before = line[start : match.start()].rstrip(".!?…\"')]")
            last_word = before.rsplit(" ", 1)[-1].lower() if before else ""
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                continue
            sentences.append(line[start : match.start()].strip())
            start = match.end()
        tail = line[start:].strip()
        if tail:
            sentences.append(tail)
    return [sentence for sentence in sentences if re.search(r"\w", sentence)]


_PRONOUN_START = r"(?:I|I'm|I've|I'd|I'll|im|ive|my|we|we're|we've|our|please|he|she|his|her|they|their)\b"
_CLAUSE_BREAKS = [
    re.compile(r"\s*;\s*"),
    re.compile(r":\s+"),
    # "..., and I", ", but my", ", so we": a new clause about the user.
    re.compile(rf",\s*(?:and|but|so|also|plus|because|since|as)?\s*(?={_PRONOUN_START})", re.IGNORECASE),
    re.compile(rf"\s+(?:and|but|so|because|plus|while|whereas)\s+(?={_PRONOUN_START})", re.IGNORECASE),
    # A contrast or a consequence says something else: cut before it.
    re.compile(r",?\s+but\s+", re.IGNORECASE),
    re.compile(r",?\s+so\s+(?=(?:a|an|the|no|it|that|this|there|maybe|just)\b)", re.IGNORECASE),
    re.compile(r",\s*so\s+", re.IGNORECASE),
    # "..., been there two years": a clause whose subject was left out.
    re.compile(r",\s*(?=(?:been|just|planning|moving|working|living)\b)", re.IGNORECASE),
    # "I'm 38, is that too old?": the question is a clause of its own.
    re.compile(
        r",\s*(?=(?:is|are|do|does|did|can|could|would|should|will|what|how|why|where|when|who|any)\b)",
        re.IGNORECASE,
    ),
]
_ELLIPSIS_I = re.compile(rf"^(I\s+.+?)\s+and\s+(?=(?:also\s+)?(?:{_ELLIPTIC_VERBS})\b)", re.IGNORECASE)
_ELLIPSIS_HAVE = re.compile(
    rf"^(I\s+{ADV}(?:have|own))\s+(.+?)\s+and\s+(?=(?:also\s+)?{_COUNT}\s)",
    re.IGNORECASE,
)
_SUBJECT_PHRASE = re.compile(
    rf"^(my\s+(?:[\w-]+\s+){{0,4}}?(?:{REL}|{_PETS}|{_PEOPLE})(?-i:\s+[A-Z][a-z]+)?)\s+(.+)$", re.IGNORECASE
)


def _third_person_elliptic() -> str:
    return "|".join(third_person_verb(verb) for verb in _ELLIPTIC_VERBS.split("|") if "[" not in verb)


_AND_3SG = re.compile(rf"\s+and\s+(?=(?:also\s+)?(?:{_third_person_elliptic()})\b)", re.IGNORECASE)


# Chat drops the subject: "just finished Elden Ring", "planning a trip to Greece", "been there two years".
_DROPPED_SUBJECT = [
    (
        re.compile(
            r"^(?=(?:planning|moving|going|travel+ing|flying|trying|thinking|hoping|training|learning|studying|"
            r"visiting|heading|starting|getting|saving|expecting|looking to)\b)",
            re.IGNORECASE,
        ),
        "I am ",
    ),
    (
        re.compile(
            r"^(?=(?:just |recently |finally )?(?:finished|started|bought|moved|got|adopted|quit|booked|joined|"
            r"graduated|retired|sold|began|switched|signed up|completed)\b)",
            re.IGNORECASE,
        ),
        "I ",
    ),
    (re.compile(r"^(?=(?:love|hate|prefer|live|work|have)\b)", re.IGNORECASE), "I "),
    (re.compile(r"^been\b", re.IGNORECASE), "I have been"),
]


def _with_subject(clause: str) -> str:
    for pattern, subject in _DROPPED_SUBJECT:
        if pattern.match(clause):
            return pattern.sub(subject, clause[:1].lower() + clause[1:], count=1)
    return clause


MAX_CLAUSE_CHARS = 400


def split_clauses(sentence: str) -> list[str]:
    """Clauses of a sentence that may each state one thing about the user."""
    # Before the breaks, or "my wife and I are moving" would lose its subject at "and I".
    parts = [_PAIR_SUBJECT.sub("we", sentence)]
    for breaker in _CLAUSE_BREAKS:
        parts = [piece for part in parts for piece in breaker.split(part) if piece and piece.strip()]
    clauses: list[str] = []
    for part in parts:
        # A statement about oneself is short; a run-on paste is not one, and would only cost regex time.
        if len(part) <= MAX_CLAUSE_CHARS:
            clauses.extend(_split_ellipsis(_with_subject(normalize(part))))
    return [clause for clause in clauses if clause]


def _split_ellipsis(clause: str) -> list[str]:
    """Clauses joined by "and" with the subject said once, each given its subject back."""
    out: list[str] = []
    # Every step removes text from `rest`, so the loop ends.
    rest = clause
    while True:
        # "I have a house and two cats" -> "I have a house", "I have two cats".
        match = _ELLIPSIS_HAVE.match(rest)
        if match:
            head = match.group(1)
            out.append(f"{head} {match.group(2)}")
            rest = f"{head} {rest[match.end() :]}"
            continue
        # "I'm a night owl and prefer meetings after 11am" -> "...", "I prefer meetings after 11am".
        match = _ELLIPSIS_I.match(rest)
        if match:
            out.append(match.group(1))
            rest = "I " + rest[match.end() :]
            continue
        # "My son has ADHD and struggles with homework" -> "...", "My son struggles with homework".
        match = _SUBJECT_PHRASE.match(rest)
        if match:
            subject, predicate = match.groups()
            pieces = _AND_3SG.split(predicate, maxsplit=1)
            if len(pieces) == 2:
                out.append(f"{subject} {pieces[0]}")
                rest = f"{subject} {pieces[1]}"
                continue
        out.append(rest)
        return out


# -- who "he", "she" and "Emma" are -----------------------------------------------------------------


@dataclass
class _Referent:
    phrase: str  # "my daughter Emma"
    gender: str  # "f", "m" or "" (either)
    sentence: int  # where it was last mentioned
    end: int  # where the mention ends in that sentence


_MALE_PRONOUNS = frozenset({"he", "he's", "he'll", "he'd", "his", "him"})
# Between a mention and a pronoun, one of these starts another clause.
_CLAUSE_GAP = re.compile(r"[,;:]|\b(?:and|but|so|because|since|as|while|when|then)\b", re.IGNORECASE)
# "at Spotify", "in Leeds": where "been there" or "lived there" points.
_PLACE = re.compile(
    rf"\b(?P<prep>at|in|to|for) (?P<place>(?!(?:{_MONTHS}|{_DAYS}|I)\b)(?-i:[A-Z][\w&'-]*(?: [A-Z][\w&'-]*)*))",
    re.IGNORECASE,
)
_THERE = re.compile(
    r"\b(?P<verb>been|worked|work|working|lived|live|living|studied|study|grew up|stayed|stay) there\b", re.IGNORECASE
)


class _References:
    """The family members, pets and places the user introduced, to read "he", "her", a first name and "there".

    Only what the user introduced ("my son Leo", "at Spotify") is resolved,
    and only for a few sentences: an unresolved pronoun is left alone (the
    clause is then usually dropped as vague), which is better than a memory
    about the wrong person.
    """

    WINDOW = 3

    def __init__(self) -> None:
        self.referents: list[_Referent] = []
        self.names: dict[str, str] = {}
        self.place: tuple[str, str, int] | None = None
        self.sentence = 0

    def resolve(self, sentence: str) -> str:
        self.sentence += 1
        stripped = _LEADING_FILLER.sub("", sentence.strip()).strip()
        first = stripped.split(" ", 1)[0].rstrip(",.!?:;")
        first = first.removesuffix("'s")
        if first in self.names and not stripped.startswith(self.names[first]):
            # "Emma is obsessed with triceratops" -> "my daughter Emma is ...".
            sentence = stripped.replace(first, self.names[first], 1)
        sentence = self._there(sentence)
        out: list[str] = []
        position = 0
        for match in _REFERENCE_TOKENS.finditer(sentence):
            out.append(sentence[position : match.start()])
            position = match.end()
            if match.group("named") or match.group("mention"):
                self._mention(match)
                out.append(match.group(0))
            else:
                out.append(self._pronoun(match, sentence))
        out.append(sentence[position:])
        return "".join(out)

    def _there(self, sentence: str) -> str:
        places = [(match.end(), match.group("prep"), match.group("place")) for match in _PLACE.finditer(sentence)]
        ends = [end for end, _, _ in places]

        def place_before(position: int) -> tuple[str, str] | None:
            index = bisect.bisect_right(ends, position)
            if index:
                return places[index - 1][1], places[index - 1][2]
            if self.place is not None and self.sentence - self.place[2] <= self.WINDOW:
                return self.place[0], self.place[1]
            return None

        def replace(match: re.Match[str]) -> str:
            place = place_before(match.start())
            if place is None:
                return match.group(0)
            prep = "at" if place[0].lower() == "at" else "in"
            return f"{match.group('verb')} {prep} {place[1]}"

        resolved = _THERE.sub(replace, sentence)
        for match in _PLACE.finditer(resolved):
            self.place = (match.group("prep"), match.group("place"), self.sentence)
        return resolved

    def _mention(self, match: re.Match[str]) -> None:
        rel = (match.group("rel1") or match.group("rel2") or "").lower()
        name = match.group("name")
        phrase = "my" + match.group(0)[2:]
        if name:
            self.names[name] = match.group(0)
        self.referents.append(
            _Referent(phrase=phrase, gender=_GENDER.get(rel, ""), sentence=self.sentence, end=match.end())
        )

    def _pronoun(self, match: re.Match[str], sentence: str) -> str:
        word = match.group(0)
        lower = word.lower()
        following = sentence[match.end() :].lstrip()
        next_word = following.split(" ", 1)[0].lower().strip(",.!?;:") if following else ""
        possessive = lower == "his" or (lower == "her" and bool(next_word) and next_word not in _NOT_POSSESSED)
        objective = lower == "him" or (lower == "her" and not possessive)
        referent = self._find("m" if lower in _MALE_PRONOUNS else "f", sentence, match.start(), objective=objective)
        if referent is None:
            return word
        referent.sentence = self.sentence
        phrase = referent.phrase
        if lower in {"he's", "she's"}:
            return f"{phrase} is"
        if lower in {"he'll", "she'll"}:
            return f"{phrase} will"
        if lower in {"he'd", "she'd"}:
            return f"{phrase} would"
        return f"{phrase}'s" if possessive else phrase

    def _find(self, gender: str, sentence: str, start: int, *, objective: bool) -> _Referent | None:
        for referent in reversed(self.referents):
            if self.sentence - referent.sentence > self.WINDOW:
                return None
            if referent.gender not in (gender, ""):
                continue
            same_clause = referent.sentence == self.sentence and not _CLAUSE_GAP.search(sentence[referent.end : start])
            if same_clause:
                # "My husband does homework with him": an object is someone else
                # than its clause's subject; "my dog scratches his ears" needs no help.
                if objective:
                    continue
                return None
            return referent
        return None


_NOT_POSSESSED = _words(
    "a an the to for with at in on and or but so that this some any up out back from about by too again",
    "is was will would",
)
_REFERENCE_TOKENS = re.compile(
    rf"(?P<named>\b[Mm]y {_MODIFIER}"
    rf"(?P<rel1>{_FEMALE}|{_MALE}|{_NEUTRAL_FAMILY}|{_PETS}|{_PEOPLE}),? "
    r"(?P<name>(?:Mr\.|Mrs\.|Ms\.|Dr\.) [A-Z][a-z]+|(?!I\b)[A-Z][a-z]+)\b)"
    rf"|(?P<mention>\b[Mm]y {_MODIFIER}"
    rf"(?P<rel2>{_FEMALE}|{_MALE}|{_NEUTRAL_FAMILY}|{_PETS}|{_PEOPLE})\b(?!-))"
    r"|\b(?:[Hh]e's|[Ss]he's|[Hh]e'll|[Ss]he'll|[Hh]e'd|[Ss]he'd|[Hh]e|[Ss]he|[Hh]is|[Hh]im|[Hh]er)\b(?!')",
)


# -- the rules --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One line of the table: a clause matching `pattern` is dropped (kind None) or kept.

    `category` None means: read it from the clause's words (TOPICS), falling
    back to `fallback`. `template`, when set, writes the memory from the
    pattern's named groups instead of the generic third-person rewrite.
    """

    pattern: re.Pattern[str]
    kind: str | None
    category: str | None = None
    importance: float = 0.5
    template: str | None = None
    fallback: str = "general"


def _keep(
    pattern: str,
    kind: str,
    category: str | None,
    importance: float,
    *,
    template: str | None = None,
    fallback: str = "general",
    flags: int = re.IGNORECASE,
) -> Rule:
    return Rule(re.compile(pattern, flags), kind, category, importance, template, fallback)


def _drop(pattern: str) -> Rule:
    return Rule(re.compile(pattern, re.IGNORECASE), None)


FACT, PREFERENCE, EVENT = "fact", "preference", "event"

RULES: tuple[Rule, ...] = (
    # -- not about the user, or not durable --------------------------------------------------------
    _drop(r"\?\s*$"),
    _drop(
        r"^(?:what|how|why|where|when|who|whom|whose|which|can|could|would|will|should|shall|do|does|did|is|are|"
        r"am|was|were|have|has|may|might|any|anything|is there|are there)\b"
    ),
    _drop(r"^(?:if|what if|suppose|supposing|imagine|in case|unless|maybe|perhaps|hopefully|let's|let me|lets)\b"),
    _drop(
        r"^(?:hi|hello|hey|thanks|thank you|thx|ty|good (?:morning|evening|night|afternoon)|bye|goodbye|"
        r"see you|cheers|ok|okay|sorry|welcome|congrats|please help|help)\b"
    ),
    _drop(r"^(?:you|your|you're|u|ur)\b"),
    # A vague ending ("... with that", "... there") refers to something said before: not a fact on its own.
    _drop(r"\b(?:it|that|this|them|those|these|there|one|so)\s*[.!]*$"),
    _drop(rf"^I {ADV}(?:do not|don't|did not|didn't) (?:know|think|understand|get|remember|care|see|mind)\b"),
    _drop(
        rf"^I {ADV}(?:think|thought|feel|felt|believe|guess|bet|hope|know|knew|see|understand|agree|disagree|"
        r"mean|meant|told|asked|said|wonder|wondered|suppose|assume|doubt|forgot|remember|appreciate|noticed|"
        r"tried|clicked|restarted|rebooted|reinstalled|checked|searched|looked|did|just wanted|wanted to|"
        r"would like to (?:know|ask|see|check|try|get|order|cancel|change|find|talk|speak|return|reset|update)|"
        r"need (?:help|you|some help|assistance|a refund|to know|to find|to fix|to reset|to change)|"
        r"want (?:you|a refund|to know|to ask|to check)|can't (?:find|get|figure|log|access|open|connect|see|seem|"
        r"remember|believe|wait|thank)|cannot (?:find|log|access|open|connect)|love (?:you|it|this|that)|"
        r"hate (?:it|this|that) when)\b"
    ),
    _drop(
        r"^I (?:was|am) (?:just |only )?(?:wondering|asking|kidding|joking|curious|checking|testing|browsing|"
        r"looking around|thinking out loud)\b"
    ),
    _drop(
        r"^I am (?:not sure|unsure|fine|good|ok|okay|great|alright|well|doing|sorry|back|here|ready|done|confused|"
        r"lost|bored|tired|exhausted|hungry|thirsty|glad|happy|excited|thrilled|sad|upset|frustrated|annoyed|"
        r"overwhelmed|worried|nervous|stressed|stuck|still|so|really|very|pretty|quite|a bit|a little|a tad|"
        r"kind of|sort of|impressed|amazed|afraid (?:that|so|not)|having (?:trouble|issues|a problem|problems)|"
        r"getting (?:an? )?(?:error|message|warning)|looking (?:for|at)|using this|new here|on (?:the|my) "
        r"(?:phone|way|laptop|computer)|about to (?:leave|go)|typing|writing this|asking|aware|sure)\b"
    ),
    _drop(r"^I am going to (?:try|check|do|test|restart|give|look|need|have to|ask|call|wait|see|go with|take)\b"),
    # -- who the user is ---------------------------------------------------------------------------
    _keep(
        r"^(?:my name is|my name's|I am called|I go by|call me|people call me|everyone calls me|you can call me) "
        r"(?P<name>[A-Za-z][\w'-]*(?: [A-Z][\w'-]*)?)$",
        FACT,
        "personal",
        0.8,
        template="User's name is {name}",
    ),
    _keep(
        rf"^I am (?!(?:{_NATIONALITIES})\b)(?P<name>[A-Z][a-z]+(?: [A-Z][a-z]+)?)$",
        FACT,
        "personal",
        0.8,
        template="User's name is {name}",
        flags=0,
    ),
    _keep(
        r"^I am (?P<age>\d{1,3})(?: years old| years| yo| y/o)?$",
        FACT,
        "personal",
        0.6,
        template="User is {age} years old",
    ),
    _keep(r"^I (?:was born|turn \d+|turned \d+|am turning \d+)\b", FACT, "personal", 0.6),
    # -- health: what must never be forgotten --------------------------------------------------------
    _keep(rf"^I am {ADV}(?:\w+ )?(?:allergic|intolerant|sensitive) to\b", FACT, "health", 0.9),
    _keep(
        rf"^I am {ADV}(?:lactose[- ]intolerant|gluten[- ]intolerant|coeliac|celiac|diabetic|epileptic|asthmatic|"
        r"anemic|anaemic|pregnant|deaf|blind|colou?r[- ]?blind|immunocompromised|hard of hearing|in a wheelchair|"
        r"a wheelchair user|recovering from|in recovery|sober|on (?:(?:a |an )?\w+ )?(?:medication|meds|insulin|"
        r"blood thinners|antidepressants|chemo))\b",
        FACT,
        "health",
        0.9,
    ),
    _keep(
        rf"^I {ADV}(?:have|had|suffer from|struggle with|was diagnosed with|got diagnosed with|live with|"
        rf"am dealing with|deal with)\b.*\b(?:{_HEALTH})\b",
        FACT,
        "health",
        0.85,
    ),
    _keep(
        rf"^I {ADV}(?:take|am taking|use|need)\b.*\b(?:{_MEDS}|for (?:my )?(?:\w+ )?(?:{_HEALTH}|pain))\b",
        FACT,
        "health",
        0.8,
    ),
    _keep(
        rf"^I {ADV}(?:can't|cannot|can not|must not|mustn't|should not|shouldn't|am not allowed to|am unable to) "
        r"(?:eat|drink|have|digest|tolerate|handle)\b",
        FACT,
        None,
        0.8,
        fallback="food",
    ),
    _keep(
        r"^I (?:just |recently )?(?:got|was|have been|had been) (?:stung|bitten|diagnosed|injured|"
        r"hospitali[sz]ed|hurt|in an accident)\b",
        EVENT,
        "health",
        0.7,
    ),
    _keep(
        r"^I (?:just |recently )?(?:broke|sprained|tore|injured|hurt|pulled|dislocated|fractured) my\b",
        EVENT,
        "health",
        0.7,
    ),
    # -- diet ----------------------------------------------------------------------------------------
    _keep(
        rf"^I am {ADV}(?:not )?{ADV}(?:a |an )?(?:strict )?(?:vegetarian|vegan|pescatarian|pescetarian|flexitarian|"
        r"plant[- ]based|gluten[- ]free|dairy[- ]free|nut[- ]free|keto|paleo|teetotal|teetotaler|kosher|halal|"
        r"on (?:a |the )?(?:\w+ )?diet|doing (?:keto|paleo|intermittent fasting|whole30))\b",
        FACT,
        "food",
        0.75,
    ),
    _keep(
        rf"^I {ADV}(?:do not|don't|never|avoid|no longer|stopped|gave up|can't|cannot) "
        r"(?:eat|eating|drink|drinking|touch|consume)\b",
        FACT,
        "food",
        0.7,
    ),
    _keep(
        rf"^I am {ADV}(?:cutting (?:down|back) on|cutting out|avoiding|giving up|reducing|limiting|off) "
        r"(?!(?:the|this|that|it)\b)",
        FACT,
        None,
        0.6,
        fallback="food",
    ),
    # -- people and pets ---------------------------------------------------------------------------
    # What a relative is doing right now ("my wife is handling the cake") passes.
    _drop(
        rf"^my (?:\w+ )?(?:{REL}|{_PETS}|{_PEOPLE})(?: [A-Z]\w+)? (?:is|are|was|were|has been|have been|had been) "
        r"(?!going|planning|moving|expecting|"
        r"starting|working|studying|training|getting|retiring|turning|visiting|coming|flying|learning|"
        r"having a baby|allergic|obsessed|into)\w+ing\b"
    ),
    _keep(
        rf"^my (?:\w+ )?(?:{_FEMALE}|{_MALE}|{_NEUTRAL_FAMILY})\b.*\b(?:birthday|anniversary)\b",
        EVENT,
        "family",
        0.75,
    ),
    _keep(rf"^my (?:[\w-]+ ){{0,4}}?(?:{REL})\b", FACT, "family", 0.75),
    _keep(rf"^my (?:[\w-]+ ){{0,4}}?(?:{_PETS})\b", FACT, "pets", 0.6),
    _keep(
        r"^my (?:(?:\w+|\w+-\w+) )?(?:boss|manager|coworkers?|co-workers?|colleagues?|team|company|employer|job|"
        r"clients?|business|startup|shift|shifts|office|salary|income|pay|contract)\b",
        FACT,
        "work",
        0.6,
    ),
    _keep(
        r"^my (?:(?:\w+|\w+-\w+) )?(?:friends?|best friend|roommate|flatmate|neighbou?rs?|landlord|landlady|"
        r"teacher|doctor|therapist|dentist|coach|mentor)\b",
        FACT,
        "relationships",
        0.6,
    ),
    _keep(
        r"^my (?:favou?rite|fave|go-to) (?P<what>.+?) (?:is|are|was)\b",
        PREFERENCE,
        None,
        0.6,
    ),
    _keep(r"^my (?:birthday|anniversary|wedding)\b", EVENT, "personal", 0.7),
    _keep(
        r"^my (?:\w+ )?(?:back|lower back|knees?|hips?|shoulders?|neck|wrists?|ankles?|feet|foot|eyes|eyesight|"
        r"hearing|joints|stomach|skin|heart|hands?)\b (?:always |often |sometimes |still )?(?:hurts|aches|is|are|"
        r"gets|get|has been|have been|isn't|aren't|can't)\b",
        FACT,
        "health",
        0.7,
    ),
    _keep(
        r"^my (?:rent|mortgage|lease|budget|savings|house|home|apartment|flat|place|car|address|hometown|"
        r"native language|first language|mother tongue|goal|dream|book club|club|band|gym|church|school|"
        r"university|college|degree|major|commute|neighbou?rhood|garden|hobby|hobbies|diet|doctor|blood type|"
        r"allerg\w+|condition|surgery|appointment|flight|trip|wedding|move|visa|passport|new job)\b",
        FACT,
        None,
        0.55,
    ),
    # -- "I have" ------------------------------------------------------------------------------------
    _keep(
        rf"^I {ADV}(?:have|had|am raising) {_COUNT}? ?(?:\w+ ){{0,2}}?(?:{REL})\b",
        FACT,
        "family",
        0.75,
    ),
    _keep(rf"^I {ADV}(?:have|own|had|got|adopted) {_COUNT}? ?(?:\w+ ){{0,2}}?(?:{_PETS})\b", FACT, "pets", 0.6),
    _keep(
        rf"^I {ADV}(?:have|hold|got|earned|completed|finished) (?:a |an |my )?(?:\w+ )?(?:degree|master'?s|"
        r"bachelor'?s|phd|doctorate|mba|diploma|certificat\w*|licen[cs]e|black belt)\b",
        FACT,
        "education",
        0.6,
    ),
    _keep(
        rf"^I {ADV}(?:have|own|drive|ride|rent|live in) {_COUNT}? ?(?:(?!at |from |in |to )[\w-]+ ){{0,3}}?"
        r"(?:car|house|home|flat|"
        r"apartment|condo|studio|bike|motorbike|motorcycle|scooter|boat|garden|cabin|mac|macbook|iphone|android|"
        r"pixel|pc|kindle|tesla|van|truck)s?\b",
        FACT,
        None,
        0.45,
    ),
    _keep(
        rf"^I {ADV}(?:do not|don't|no longer) (?:have|own) (?:a|an|any)\b",
        FACT,
        None,
        0.45,
    ),
    _keep(
        rf"^I (?:{ADV})?(?:have been|had been|have lived|have worked|have studied|have played|have known) .*"
        r"\b(?:for |since )?(?:\w+ )?(?:\w+ )?(?:years?|months?|decades?)\b",
        FACT,
        None,
        0.55,
    ),
    _keep(
        rf"^I have {ADV}(?:been to|visited|lived in|read|seen|watched|played|tried|climbed|run|done|never been|"
        r"traveled to|travelled to)\b",
        FACT,
        None,
        0.45,
    ),
    # -- where and how the user lives and works --------------------------------------------------------
    _keep(
        rf"^I {ADV}(?:live|am living|am based|reside|am located|grew up|was raised|am originally from|am from|"
        r"come from|have lived|moved to|relocated to|am staying|live with)\b",
        FACT,
        "location",
        0.7,
    ),
    _keep(
        rf"^I {ADV}(?:work|am working|have worked|have been working|teach|run a|own a|manage|lead|freelance|"
        r"am employed|am self-employed|am unemployed|am retired|am between jobs|am a freelancer|"
        r"am on (?:parental|maternity|paternity|sick) leave)\b",
        FACT,
        "work",
        0.65,
    ),
    _keep(
        rf"^I {ADV}(?:just |recently )?(?:got|was) (?:promoted|hired|fired|laid off|let go|accepted|married|"
        r"engaged|divorced|a new job|a job|a promotion|into)\b",
        EVENT,
        None,
        0.7,
    ),
    _keep(
        rf"^I {ADV}(?:started (?:a |an |my |working|at|as|studying|learning|running|training|going|seeing|dating|"
        r"a new)|quit (?:my|smoking|drinking|\w+ing)|left (?:my|the company|\w+ to)|joined|graduated|retired|"
        r"bought (?:a|an|my) (?:\w+ )?(?:house|home|flat|apartment|car|condo|place|bike)|sold (?:my|the)|adopted|"
        r"moved (?:to|from|in|out|here|back|house)|finished (?:my|a) (?:degree|phd|studies|master|course|bootcamp)|"
        r"became|had (?:a|my|twins|our) (?:baby|son|daughter|first|second|surgery))",
        EVENT,
        None,
        0.6,
    ),
    _keep(
        rf"^I am {ADV}(?:a|an) (?:big |huge |massive |great |real )?(?:fan|lover|fanatic|enthusiast) of\b",
        PREFERENCE,
        None,
        0.55,
    ),
    _drop(rf"^I am {ADV}(?:a|an) (?:bit|little|tad|lot|few)\b"),
    _keep(
        r"^I am (?:(?:in my )?(?:early |mid |late )?(?:teens|twenties|thirties|forties|fifties|sixties|seventies|"
        r"eighties)|(?:married|single|divorced|engaged|widowed|separated|a (?:single |stay-at-home |working )?"
        r"(?:mom|mum|dad|father|mother|parent|grandparent|grandmother|grandfather|grandma|grandpa)|"
        r"expecting|pregnant))\b",
        FACT,
        None,
        0.75,
        fallback="family",
    ),
    _keep(
        r"^I am (?:getting married|getting engaged|getting divorced|having (?:a |my |our )?(?:baby|twins|child|"
        r"first|second|third)|expecting (?:a |my |our )?(?:baby|twins|child|first|second))\b",
        EVENT,
        "family",
        0.8,
    ),
    _keep(rf"^I am (?:\w+ )?(?:{_NATIONALITIES})\b", FACT, "personal", 0.6, flags=0),
    _keep(
        r"^I am (?:at )?(?:about |around |roughly )?(?:an? )?(?:a1|a2|b1|b2|c1|c2|hsk ?\d|n[1-5]|beginner|"
        r"intermediate|advanced|native|fluent|conversational)\b",
        FACT,
        "education",
        0.5,
    ),
    _keep(rf"^I {ADV}(?:speak|am fluent in|understand|read|write) (?:\w+ )?(?:{_LANGUAGES})\b", FACT, "personal", 0.5),
    _keep(
        r"^I am (?:studying|learning|training|practicing|practising|taking (?:a |an )?(?:class|course|lessons)|"
        r"in (?:my|the) \w+ year|a student|enrolled|doing (?:a|an|my) (?:phd|master|degree|bachelor|course|"
        r"apprenticeship|internship))\b",
        FACT,
        None,
        0.6,
        fallback="education",
    ),
    _keep(
        rf"^I am {ADV}(?:a|an|my|the (?:main|only|primary|sole|eldest|youngest|oldest|head|owner|founder|lead|"
        r"carer|caregiver)) ",
        FACT,
        None,
        0.55,
    ),
    _keep(rf"^I am {ADV}(?:in|based in|living in) (?-i:[A-Z])", FACT, "location", 0.6),
    _keep(rf"^I am {ADV}on (?:a|an) (?:\w+ )?(?:budget|salary|pension|student loan)\b", FACT, "finance", 0.5),
    _keep(
        rf"^I am {ADV}(?:more |less |much more |not |not really |very |really |so |totally |completely )?"
        r"(?:into|obsessed with|passionate about|addicted to|crazy about|afraid of|scared of|terrified of|"
        r"phobic of|not a fan of|not into|a morning person|a night owl|an early bird|not a morning person|"
        r"left-handed|right-handed|introverted|extroverted|an introvert|an extrovert|shy|tall|short)\b",
        PREFERENCE,
        None,
        0.55,
    ),
    # -- plans and events --------------------------------------------------------------------------
    _keep(
        rf"^I (?:need|want|would like|am trying|am looking|have) to (?:book|reserve|plan|arrange|organi[sz]e) "
        rf"(?:a |an |my |the |some )?(?:\w+ ){{0,3}}?(?:{_TRAVEL_THINGS})\b",
        EVENT,
        "travel",
        0.5,
    ),
    _keep(
        rf"^I (?:need|want|would like|am looking for) (?:a |an |some )?(?:\w+ ){{0,2}}?(?:{_TRAVEL_THINGS}) "
        r"(?:to|in|for|from|near|at)\b",
        EVENT,
        "travel",
        0.5,
    ),
    _keep(
        rf"^I am {ADV}(?:going|planning|hoping|about|intending|aiming|preparing|saving up|saving|trying|"
        r"looking|determined) to\b(?! (?:try|check|need|have|ask|call|wait|see|look|test)\b)",
        EVENT,
        None,
        0.6,
        fallback="plans",
    ),
    _keep(
        rf"^I {ADV}(?:plan|intend|hope|aim|want|would like|would love|am hoping|have decided|decided|am determined) "
        r"to (?:buy|move|learn|visit|travel|retire|start|become|live|get|go|open|run|study|switch|change|own|"
        r"launch|build|quit|lose|save|have|throw|host|organi[sz]e|celebrate|propose|apply|take|finish|try|"
        r"adopt|write|compete|climb|cycle|hike|see|spend|invest|pay off|renovate|sell|marry|avoid|cut|eat|drink|"
        r"spend)\b",
        EVENT,
        None,
        0.55,
        fallback="plans",
    ),
    _keep(
        rf"^I am {ADV}(?:moving|relocating|flying|travel+ing|visiting|heading|leaving|going|driving|taking|"
        r"starting|beginning|retiring|training|competing|running|hosting|throwing|organi[sz]ing|celebrating|"
        r"applying|interviewing|switching|changing|thinking (?:about|of)|considering|planning|renovating|"
        r"building|buying|selling|saving|looking to|due|booked|scheduled|signed up|registered|enrolled|"
        r"graduating|finishing)\b",
        EVENT,
        None,
        0.6,
        fallback="plans",
    ),
    _keep(
        rf"^I will {ADV}(?:be )?(?:\w+ ){{0,5}}?{_WHEN}",
        EVENT,
        None,
        0.5,
        fallback="plans",
    ),
    _keep(
        r"^I have (?:a |an |my )(?:\w+ ){0,2}?(?:appointment|interview|exam|surgery|operation|meeting with|"
        rf"trip|flight|wedding|race|marathon|concert|conference|deadline|holiday|vacation)\b.*{_WHEN}",
        EVENT,
        None,
        0.55,
        fallback="plans",
    ),
    # -- constraints and standing instructions --------------------------------------------------------
    _keep(
        r"^please (?:always|never|do not|don't|only|avoid|stop|remember|keep|use|call|reply|answer|respond|write|"
        r"talk|speak|address|send|book|suggest|recommend|make sure|refer|format|include|exclude)\b",
        PREFERENCE,
        None,
        0.7,
        fallback="instructions",
    ),
    _keep(
        r"^(?:always|never|do not ever|don't ever) (?:call|email|text|message|book|suggest|recommend|schedule|"
        r"use|send|reply|answer|respond|write|give|show|put|assume|mention)\b",
        PREFERENCE,
        None,
        0.7,
        fallback="instructions",
    ),
    _keep(
        r"^(?P<what>[\w' -]{3,60}?) (?:is|are) (?:a must|essential|non-negotiable|mandatory|"
        r"a requirement|a dealbreaker|a deal-breaker|required)(?: for me)?$",
        PREFERENCE,
        None,
        0.6,
        template="User needs {what}",
    ),
    _keep(
        r"^(?P<what>[\w' -]{3,40}?) (?:is|are) (?P<how>(?:really |very |quite |so |too |a bit )?"
        r"(?:hard|difficult|tough|tricky|easy|a struggle|stressful|exhausting)) for me$",
        FACT,
        None,
        0.5,
        template="User finds {what} {how}",
    ),
    _keep(rf"^I {ADV}need (?:\w+ ){{1,4}}to be\b", PREFERENCE, None, 0.6),
    _keep(
        rf"^I {ADV}(?:want|need|prefer|would like) (?:you|the assistant|answers|replies|responses) ",
        PREFERENCE,
        None,
        0.65,
    ),
    _keep(rf"^I {ADV}(?:can't|cannot|can not) (?:stand|bear|tolerate|abide)\b", PREFERENCE, None, 0.6),
    _keep(
        rf"^I {ADV}(?:can|can't|cannot|can not|could never|am unable to|am not able to) (?:only )?(?:{ADV})"
        r"(?:study|work|train|meet|travel|sleep|read|speak|cook|swim|drive|walk|run|do|fly|sit|climb|lift|"
        r"stand|bend|kneel|see|hear|afford|commit|make it|take|use|type|ski|bike|ride|play|sing)\b",
        FACT,
        None,
        0.6,
    ),
    _keep(
        rf"^I {ADV}(?:do not|don't|never|did not|didn't) (?:drive|swim|cook|fly|ski|smoke|drink alcohol|drink|"
        r"gamble|own|have a car|watch|use|read)\b",
        FACT,
        None,
        0.5,
    ),
    _keep(rf"^I {ADV}tend to\b", PREFERENCE, None, 0.45),
    _keep(
        rf"^I {ADV}(?:finished|completed|beat) (?!(?:the|this|that|it|installing|setting|updating|step)\b)",
        EVENT,
        None,
        0.45,
    ),
    _keep(
        rf"^I {ADV}(?:get|become|feel) {ADV}(?:nervous|anxious|stressed|overwhelmed|bored|cold|hot|seasick|carsick|"
        r"airsick|motion sick|migraines|headaches|nosebleeds|panic attacks|sunburn\w*|distracted|tired|jet lag|"
        r"hangry|up)\b",
        FACT,
        None,
        0.5,
    ),
    _keep(rf"^I have (?:{ADV})?(?:never|not yet|not ever) (?!had the chance)\w+", FACT, None, 0.45),
    _keep(rf"^I {ADV}used to\b", FACT, None, 0.45),
    _keep(
        rf"^I {ADV}(?:played|grew up|lived|studied|was|went|did|had|learned|learnt|took)\b.*\b(?:as a (?:kid|child|"
        r"teenager|teen|student)|when I was|in (?:high school|college|university|school|my twenties)|growing up|"
        r"years ago|for \w+ years)\b",
        FACT,
        None,
        0.45,
    ),
    # -- likes and dislikes ------------------------------------------------------------------------
    _keep(
        rf"^I {ADV}(?:love|adore|hate|detest|despise|loathe|can't live without|am passionate about|"
        r"absolutely love|really hate)\b",
        PREFERENCE,
        None,
        0.6,
    ),
    _keep(
        rf"^I {ADV}(?:would rather|would prefer|prefer|like|enjoy|dislike|fancy|favou?r|always go for|"
        r"usually go for|go for|avoid|do not (?:\w+ )?(?:like|enjoy|care for|want|eat|do)|don't (?:\w+ )?"
        r"(?:like|enjoy|care for|want|eat|do)|never (?:want|like)|would like|want (?:something|a|an|to))\b",
        PREFERENCE,
        None,
        0.5,
    ),
    # -- habits --------------------------------------------------------------------------------------
    # "I usually fall asleep around 2am", "I'm never home during the day": a habit is durable by definition.
    _keep(
        r"^I (?:am )?(?:usually|always|never|often|normally|typically|generally|rarely|regularly|mostly|"
        r"hardly ever|almost always|almost never|seldom) (?!(?:know|remember|understand|get it)\b)\w+",
        FACT,
        None,
        0.45,
    ),
    _keep(
        rf"^I {ADV}(?!(?:have|had|got|was|am|tried|clicked|checked|called|asked|said)\b)\w+\b.*\b(?:(?:a|per|each|"
        r"every|once a|twice a|three times a) (?:day|week|month|year|night|morning|evening|weekend)|every "
        rf"(?:{_DAYS})|on (?:{_DAYS})s|on weekends|on weekdays)\b",
        FACT,
        None,
        0.45,
    ),
    _keep(
        rf"^I {ADV}(?:have|own|use) (?:a|an|two|three|\d+|my own) (?!(?:question|quick|problem|issue|idea|few|"
        r"follow|suggestion|request|meeting|call|doubt|feeling|bug|error|complaint|concern|minute|second|moment|"
        r"look|try|go|chance|favou?r|thought|lot|bit|couple|hard time|good time|great time|point|typo|problem)\b)",
        FACT,
        None,
        0.4,
    ),
    _keep(
        rf"^I {ADV}(?:make|earn|get paid|take home|bring in)\b.*(?:\d|\b(?:a|per|an|each) (?:month|year|week|hour)\b)",
        FACT,
        "finance",
        0.6,
    ),
    _keep(
        rf"^I {ADV}(?:eat|drink|cook|bake|grill|read|watch|listen to|play|write|code|program|run|jog|swim|cycle|"
        r"bike|hike|climb|ski|surf|paint|draw|knit|sew|garden|practi[cs]e|meditate|travel|fly|go to|go|use|"
        r"volunteer|spend|wake up|get up|sleep|commute|shop|walk|do yoga|lift|dance|sing|collect|wear|visit|"
        r"study|learn|speak)\b",
        PREFERENCE,
        None,
        0.45,
    ),
)


# -- categories ---------------------------------------------------------------------------------------

# A kept clause without a category of its own takes the first topic its words mention.
TOPICS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, re.compile(rf"\b(?:{words})\b", re.IGNORECASE))
    for category, words in (
        (
            "health",
            rf"{_HEALTH}|{_MEDS}|doctor|hospital|surgery|pain|sick|therapy|physio|symptoms?|health|"
            r"marathon|half marathon|running|gym|workout|fitness|weight|training|yoga|knee|sleep|light sleeper",
        ),
        (
            "food",
            r"eat|eats|eating|food|cook|cooking|cooks|meals?|dish|dishes|vegetarian|vegan|spicy|sushi|pizza|"
            r"coffee|tea|wine|beer|drinks?|cuisine|restaurants?|dairy|meat|pork|beef|chicken|fish|seafood|"
            r"chocolate|breakfast|lunch|dinner|bake|baking|recipes?|kitchen|keto|diet|wok|pan|eat out|"
            r"gluten|lactose|nuts?|peanuts?|sugar|alcohol|ramen|pasta|curry|dessert",
        ),
        (
            "travel",
            rf"{_TRAVEL_THINGS}|fly|flying|flies|seats?|aisle|airport|airlines?|travel\w*|passport|visa|"
            r"beach|luggage|carry-on|layover|booking|tap|lufthansa|ryanair|abroad|tour|tours|sightseeing",
        ),
        ("family", rf"{REL}|married|wedding|engaged|divorced|family|parent|mom|dad"),
        ("pets", _PETS + r"|vet"),
        (
            "work",
            r"work|works|working|job|company|office|boss|manager|colleagues?|coworkers?|career|promot\w+|"
            r"engineer|developer|teacher|nurse|doctor|lawyer|designer|meetings?|startup|team|salary|freelance\w*|"
            r"clients?|profession|intern\w*|employer|hired|shifts?|management|data science|outlook|scala|go|"
            r"python|java|javascript|rust|backend|frontend|programmer|accountant|pharmacist|chef",
        ),
        (
            "finance",
            r"budget|money|sav\w+|mortgage|afford|loan|invest\w*|crypto|rent|deposit|debt|income|"
            r"euros?|dollars?|pounds?|stocks?|pension",
        ),
        (
            "education",
            r"stud\w+|student|university|college|degree|school|course|class|learn\w*|exam|grade|"
            r"master'?s|phd|bachelor|spanish|french|german|italian|japanese|language",
        ),
        (
            "location",
            r"live|lives|living|moved|moving|move|based|city|town|neighbou?rhood|apartment|house|home|"
            r"address|country|grew up|from|relocat\w+",
        ),
        (
            "hobbies",
            r"hobby|hobbies|guitar|piano|music|band|books?|novels?|fiction|read|reads|movies?|films?|"
            r"series|painting|hiking|climbing|chess|games?|gaming|photography|gardening|jazz|club",
        ),
        (
            "tech",
            r"laptop|phone|iphone|android|windows|mac|macbook|linux|computer|printer|router|software|app|"
            r"apps|browser|email",
        ),
        ("plans", rf"{_WHEN}|plan|plans|planning|going to"),
    )
)


def category_of(text: str, fallback: str = "general") -> str:
    for category, pattern in TOPICS:
        if pattern.search(text):
            return category
    return fallback


# -- the extractor ------------------------------------------------------------------------------------

_MAX_MEMORY_CHARS = 300


def _match(clause: str) -> tuple[Rule, re.Match[str]] | None:
    for rule in RULES:
        match = rule.pattern.search(clause)
        if match:
            return rule, match
    return None


def extract_memories(messages: Sequence[Message]) -> list[ExtractedMemory]:
    """The durable statements the user made about themselves, in transcript order, without duplicates."""
    references = _References()
    found: dict[str, ExtractedMemory] = {}
    for message in messages:
        if message.role != "user":
            continue
        for sentence in split_sentences(message.content.translate(_APOSTROPHES)):
            resolved = references.resolve(sentence)
            for clause in split_clauses(resolved):
                memory = _memory_of(clause, source=sentence)
                if memory is None:
                    continue
                key = memory.content.lower()
                if key not in found or found[key].importance < memory.importance:
                    found[key] = memory
            for implied in _implied_memories(resolved, sentence, found):
                found.setdefault(implied.content.lower(), implied)
    return list(found.values())


def _memory_of(clause: str, *, source: str) -> ExtractedMemory | None:
    matched = _match(clause)
    if matched is None:
        return None
    rule, match = matched
    if rule.kind is None:
        return None
    if rule.template is not None:
        groups = {key: _later_person(value.strip()) for key, value in match.groupdict().items() if value}
        content = _finish(rule.template.format(**groups))
    else:
        content = to_third_person(clause)
    if len(content.split()) < 3:
        return None
    if len(content) > _MAX_MEMORY_CHARS:
        content = content[:_MAX_MEMORY_CHARS].rsplit(" ", 1)[0] + "…"
    category = rule.category or category_of(clause, rule.fallback)
    return ExtractedMemory(
        content=content,
        kind=rule.kind,
        category=category,
        importance=rule.importance,
        source_sentence=source,
    )


_COUNTED = re.compile(
    r"\b[Mm]y (?P<count>two|three|four|five|six|seven|eight|\d+) (?P<what>kids|children|sons|daughters|teenagers|"
    r"teens|boys|girls|dogs|cats|grandchildren|grandkids|brothers|sisters|siblings)\b"
    r"(?:,? (?:ages?|aged) (?P<ages>\d+(?:(?:,| and|, and) \d+)*))?"
)
_REL_NOUNS = {"youngest": "youngest child", "oldest": "oldest child", "eldest": "eldest child", "little one": "child"}


def _implied_memories(resolved: str, source: str, found: dict[str, ExtractedMemory]) -> list[ExtractedMemory]:
    """What a mention says in passing: "my dog Biscuit has been scratching" -> "User has a dog named Biscuit",
    "with my two kids, ages 4 and 9" -> "User has two kids aged 4 and 9" (unless a memory already says so)."""
    out: list[ExtractedMemory] = []
    for match in _NAMED.finditer(resolved):
        rel, name = match.group("rel").lower(), match.group("name")
        if any(name in memory.content for memory in [*found.values(), *out]):
            continue
        category = "pets" if re.fullmatch(_PETS, rel) else "family" if re.fullmatch(REL, rel) else "relationships"
        out.append(
            ExtractedMemory(
                content=f"User has a {_REL_NOUNS.get(rel, rel)} named {name}",
                kind=FACT,
                category=category,
                importance=0.7 if category == "family" else 0.6,
                source_sentence=source,
            )
        )
    for match in _COUNTED.finditer(resolved):
        has = f"User has {match.group('count')} {match.group('what')}"
        if any(has.lower() in memory.content.lower() for memory in [*found.values(), *out]):
            continue
        ages = match.group("ages")
        category = "pets" if match.group("what") in {"dogs", "cats"} else "family"
        out.append(
            ExtractedMemory(
                content=f"{has} aged {ages}" if ages else has,
                kind=FACT,
                category=category,
                importance=0.7,
                source_sentence=source,
            )
        )
    return out


# -- the summary --------------------------------------------------------------------------------------

_TRIVIAL = re.compile(
    r"^(?:hi|hello|hey|thanks|thank you|thx|ok|okay|sure|great|cool|nice|perfect|bye|goodbye|good (?:morning|"
    r"evening|night|afternoon)|sounds good|got it|yes|no|yep|nope|lol|haha)\b",
    re.IGNORECASE,
)
_LABELS = {"user": "User", "assistant": "Assistant", "system": "System"}
MAX_SUMMARY_CANDIDATES = 256


def summarize(
    messages: Sequence[Message],
    *,
    embed: Callable[[list[str]], np.ndarray],
    max_sentences: int,
    max_chars: int,
) -> str:
    """An extractive summary: the transcript's most central sentences, in transcript order.

    Centrality is a sentence's cosine to the centroid of all the transcript's
    sentences: for unit vectors that orders sentences exactly as their mean
    cosine to all the others does, in one matrix-vector product. Greetings,
    thanks and two-word replies are left out when there is anything else.
    Sentences are taken most central first while they fit in `max_sentences`
    and `max_chars` (labels included), then put back in transcript order and
    labelled with their speaker, so that "I love Florence" stays the
    assistant's. Ties go to the earlier sentence: the result is deterministic.
    """
    # A system prompt instructs the assistant; it is not part of what was said.
    sentences = [
        (message.role, sentence)
        for message in messages
        if message.role != "system"
        for sentence in split_sentences(message.content)
    ]
    if not sentences:
        return ""
    substantive = [item for item in sentences if len(item[1].split()) >= 3 and not _is_trivial(item[1])]
    candidates = substantive or sentences
    if len(candidates) > MAX_SUMMARY_CANDIDATES:
        # A long transcript: embed an evenly spaced sample, not every sentence (~1 s of CPU per 250).
        step = len(candidates) / MAX_SUMMARY_CANDIDATES
        candidates = [candidates[int(i * step)] for i in range(MAX_SUMMARY_CANDIDATES)]
    vectors = np.asarray(embed([sentence for _, sentence in candidates]), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    centrality = vectors @ vectors.mean(axis=0)
    order = sorted(range(len(candidates)), key=lambda index: (-round(float(centrality[index]), 6), index))

    chosen: list[int] = []
    for index in order:
        if len(chosen) >= max_sentences:
            break
        if len(_render([candidates[i] for i in sorted([*chosen, index])])) <= max_chars:
            chosen.append(index)
    if not chosen:
        role, sentence = candidates[order[0]]
        label = f"{_LABELS.get(role, role.title())}: "
        room = max_chars - len(label) - 1
        cut = sentence[:room].rsplit(" ", 1)[0] if " " in sentence[:room] else sentence[:room]
        return f"{label}{cut}…"
    return _render([candidates[i] for i in sorted(chosen)])


def _is_trivial(sentence: str) -> bool:
    return bool(_TRIVIAL.match(sentence)) and len(sentence.split()) <= 5


def _render(items: list[tuple[str, str]]) -> str:
    """ "User: A B Assistant: C": consecutive sentences of one speaker share a label."""
    parts: list[str] = []
    previous = None
    for role, sentence in items:
        if role != previous:
            parts.append(f"{_LABELS.get(role, role.title())}: {sentence}")
            previous = role
        else:
            parts[-1] += f" {sentence}"
    return " ".join(parts)


class RuleExtractor:
    """Deterministic, offline extraction: the RULES table for memories, embedding centrality for the summary."""

    name = "rules"

    def __init__(
        self,
        *,
        summary_max_sentences: int = 3,
        summary_max_chars: int = 600,
        embedder: Embedder | None = None,
    ) -> None:
        self.summary_max_sentences = summary_max_sentences
        self.summary_max_chars = summary_max_chars
        self._embedder = embedder

    def extract(self, messages: Sequence[Message]) -> Extraction:
        return Extraction(memories=extract_memories(messages), summary=self.summarize(messages))

    def summarize(self, messages: Sequence[Message]) -> str:
        # Resolved at each call, not at construction: the process's embedder may change with the settings.
        embedder = self._embedder or get_embedder()
        try:
            return summarize(
                messages,
                embed=lambda texts: embedder.embed(texts),
                max_sentences=self.summary_max_sentences,
                max_chars=self.summary_max_chars,
            )
        except EmbeddingError as exc:
            # A remote embedder that is down is transient: keep the transcript, retry later.
            raise ExtractionUnavailable(f"the summary could not be embedded: {exc}") from exc
