"""A procedural piano grand-staff **kern generator: seeded, reproducible, and musically valid
enough to engrave (every measure of every staff adds up to the time signature).

What it covers, because a recogniser trained on it must read these: key signatures (up to 4
sharps or flats), simple and compound meters, treble/bass clefs (and an occasional treble
clef in the left hand), notes from whole to sixteenth, dotted values, rests, chords,
accidentals (chromatic, and naturals against the key), ties (also across barlines) and beams
(`L`/`J`, double `LL`/`JJ` for sixteenths), optional title and composer records.

Layout of the text: the LEFT spine is the lower staff (verovio's and Humdrum's convention), a
line per onset with `.` where a staff has no new event, `=` barlines without numbers (the
normalised form the tokenizer's vocabulary expects), `==` and `*-` at the end.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction

SHARP_ORDER = "fcgdaeb"
FLAT_ORDER = "beadgcf"
LETTERS = "cdefgab"
Q = Fraction(1)                      # one quarter note

# (numerator, denominator, compound?) -> weight
METERS: dict[tuple[int, int], float] = {(4, 4): 4, (3, 4): 3, (2, 4): 2, (6, 8): 2, (3, 8): 1,
                                        (2, 2): 1}
TITLE_WORDS = ("Sonata", "Prelude", "Waltz", "Minuet", "Etude", "Song", "Dance", "Air",
               "Romance", "Study", "Nocturne", "Little", "Evening", "Spring", "in", "for",
               "the", "Piano", "No", "Op")
COMPOSERS = ("Anna Weber", "J. Smith", "L. Moreau", "K. Tanaka", "M. Rossi", "E. Novak",
             "P. Silva", "H. Berg")


@dataclass
class GenConfig:
    measures_min: int = 2            # a GrandStaff system holds 2-5 measures
    measures_max: int = 5
    title_p: float = 0.0             # chance of title/composer lines (pages: see PRESETS)
    chord_p: float = 0.25            # per long note
    rest_p: float = 0.12             # per beat cell
    tie_p: float = 0.12              # per eligible note pair
    accidental_p: float = 0.08       # chromatic alteration per note
    treble_left_p: float = 0.1       # left hand in treble clef
    max_key: int = 4                 # |fifths|: more crowd the system and are rare in practice

    def __post_init__(self) -> None:
        if not 1 <= self.measures_min <= self.measures_max:
            raise ValueError(f"GenConfig.measures_min/max invalid: {self.measures_min}, "
                             f"{self.measures_max}")
        for name in ("title_p", "chord_p", "rest_p", "tie_p", "accidental_p", "treble_left_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"GenConfig.{name} must be in [0, 1]")
        if not 0 <= self.max_key <= 7:
            raise ValueError("GenConfig.max_key must be in [0, 7]")


PRESETS: dict[str, GenConfig] = {
    "system": GenConfig(),
    # A 2100 px page holds 4-6 systems of 3-5 measures each.
    "page": GenConfig(measures_min=14, measures_max=26, title_p=0.5),
    # The embedded default (the CPU demo's data): systems of 1-3 measures, about half the
    # tokens and width of 2-5, so that a 12-minute CPU run shows its SER falling.
    "short-system": GenConfig(measures_min=1, measures_max=3),
}


@dataclass
class Event:
    dur: Fraction                    # in quarters
    pitches: list[int] = field(default_factory=list)   # diatonic steps, 0 = middle C; [] = rest
    alters: list[int] = field(default_factory=list)     # -1, 0, +1 per pitch
    natural: list[bool] = field(default_factory=list)   # explicit natural sign per pitch
    beam: str = ""                   # "L", "J", "LL", "JJ" or ""
    tie_start: bool = False
    tie_end: bool = False


def dur_text(d: Fraction) -> str:
    """Quarter-note duration -> kern recip (1 = whole, 4 = quarter, 4. = dotted quarter)."""
    for base in (Fraction(4), Fraction(2), Fraction(1), Fraction(1, 2), Fraction(1, 4)):
        recip = int(Fraction(4) / base)
        if d == base:
            return str(recip)
        if d == base * Fraction(3, 2):
            return f"{recip}."
    raise ValueError(f"no kern duration for {d} quarters")


def _has_recip(d: Fraction) -> bool:
    try:
        dur_text(d)
    except ValueError:
        return False
    return True


def pitch_text(step: int) -> str:
    octave, idx = divmod(step, 7)    # octave 0 = the octave of middle C
    letter = LETTERS[idx]
    return letter * (octave + 1) if octave >= 0 else letter.upper() * (-octave)


def key_alters(fifths: int) -> dict[str, int]:
    if fifths >= 0:
        return {ch: 1 for ch in SHARP_ORDER[:fifths]}
    return {ch: -1 for ch in FLAT_ORDER[:-fifths]}


def key_text(fifths: int) -> str:
    alters = key_alters(fifths)
    return "*k[" + "".join(ch + ("#" if a > 0 else "-") for ch, a in alters.items()) + "]"


class PieceGenerator:
    def __init__(self, rng: random.Random, config: GenConfig) -> None:
        self.rng = rng
        self.c = config

    # -- rhythm ---------------------------------------------------------------------------
    def _cells(self, num: int, den: int) -> list[list[Fraction]]:
        """One measure as beat cells, each a list of durations (beamable groups stay inside)."""
        r = self.rng
        compound = den == 8 and num % 3 == 0
        beat = Fraction(3, 2) if compound else Fraction(4, den)
        beats = num // 3 if compound else num
        total = beat * beats
        cells: list[list[Fraction]] = []
        left = total
        while left > 0:
            # Long values spanning several beats, when they fit and start on a beat.
            longs = [d for d in (Fraction(4), Fraction(3), Fraction(2)) if d <= left and d % beat == 0]
            if longs and r.random() < 0.25:
                d = r.choice(longs)
                cells.append([d])
                left -= d
                continue
            if compound:
                options = [[beat], [Q, Fraction(1, 2)], [Fraction(1, 2)] * 3,
                           [Fraction(3, 4), Fraction(1, 4), Fraction(1, 2)]]
                cell = r.choices(options, weights=[3, 3, 4, 1])[0]
            elif beat == Q:
                options = [[Q], [Fraction(1, 2)] * 2, [Fraction(1, 4)] * 4,
                           [Fraction(3, 4), Fraction(1, 4)]]
                cell = r.choices(options, weights=[5, 4, 2, 1])[0]
                if left >= 2 and r.random() < 0.15:
                    cell = [Fraction(3, 2), Fraction(1, 2)]      # dotted quarter + eighth
            else:                                               # half-note beat (2/2)
                options = [[Fraction(2)], [Q, Q], [Fraction(1, 2)] * 4, [Fraction(3, 2), Fraction(1, 2)]]
                cell = r.choices(options, weights=[3, 4, 2, 1])[0]
            cells.append(list(cell))
            left -= sum(cell)
        assert left == 0, (num, den, cells)
        return cells

    # -- pitches --------------------------------------------------------------------------
    def _pitch(self, lo: int, hi: int, prev: int | None) -> int:
        if prev is None or self.rng.random() < 0.2:
            return self.rng.randint(lo, hi)
        return min(hi, max(lo, prev + self.rng.choice((-3, -2, -1, -1, 1, 1, 2, 3, 4, -4))))

    def _staff(self, measures: list[list[list[Fraction]]], lo: int, hi: int,
               key: dict[str, int]) -> list[list[Event]]:
        r, c = self.rng, self.c
        out: list[list[Event]] = []
        prev: int | None = None
        for cells in measures:
            events: list[Event] = []
            for cell in cells:
                if r.random() < c.rest_p:
                    # One rest for the whole cell where a single value exists (no `16r 16r ..`).
                    total = sum(cell, Fraction(0))
                    events += [Event(total)] if _has_recip(total) else [Event(d) for d in cell]
                    continue
                group = [Event(d) for d in cell]
                for ev in group:
                    prev = self._pitch(lo, hi, prev)
                    ev.pitches = [prev]
                    if ev.dur >= Q and r.random() < c.chord_p:
                        extra = sorted({prev + i for i in r.sample((2, 4, 5, 7), r.randint(1, 2))
                                        if prev + i <= hi + 4})
                        ev.pitches += extra
                    ev.alters, ev.natural = [], []
                    for p in ev.pitches:
                        base = key.get(LETTERS[p % 7], 0)
                        alter, natural = base, False
                        if r.random() < c.accidental_p:
                            alter = base + r.choice((-1, 1)) if base == 0 else 0
                            natural = alter == 0
                        ev.alters.append(alter)
                        ev.natural.append(natural)
                short = [ev for ev in group if ev.dur < Q]
                if len(group) >= 2 and len(short) == len(group):
                    double = all(ev.dur == Fraction(1, 4) for ev in group)
                    group[0].beam = "LL" if double else "L"
                    group[-1].beam = "JJ" if double else "J"
                events += group
            out.append(events)
        self._ties([ev for m in out for ev in m])
        return out

    def _ties(self, events: list[Event]) -> None:
        for a, b in zip(events, events[1:]):
            if (len(a.pitches) == 1 and len(b.pitches) == 1 and not a.tie_end
                    and self.rng.random() < self.c.tie_p):
                b.pitches, b.alters, b.natural = list(a.pitches), list(a.alters), [False]
                a.tie_start = b.tie_end = True

    # -- text -----------------------------------------------------------------------------
    @staticmethod
    def event_text(ev: Event) -> str:
        d = dur_text(ev.dur)
        if not ev.pitches:
            return f"{d}r"
        notes = []
        for i, (p, a, n) in enumerate(zip(ev.pitches, ev.alters, ev.natural)):
            acc = "#" if a > 0 else "-" if a < 0 else "n" if n else ""
            tok = ("[" if ev.tie_start else "") + d + pitch_text(p) + acc + ("]" if ev.tie_end else "")
            if i == 0:
                tok += ev.beam            # beam marks go on the chord's first note only
            notes.append(tok)
        return " ".join(notes)

    def piece(self) -> str:
        r, c = self.rng, self.c
        num, den = r.choices(list(METERS), weights=list(METERS.values()))[0]
        fifths = r.randint(-c.max_key, c.max_key)
        key = key_alters(fifths)
        n_measures = r.randint(c.measures_min, c.measures_max)
        treble_left = r.random() < c.treble_left_p
        # Diatonic ranges around the staff (0 = middle C): keeps ledger lines few, as in print.
        lo_range = (-3, 9) if treble_left else (-12, 1)
        hi_range = (-2, 12)
        staves = [self._staff([self._cells(num, den) for _ in range(n_measures)], *rng_, key)
                  for rng_ in (lo_range, hi_range)]
        lines: list[str] = []
        if r.random() < c.title_p:
            words = r.sample(TITLE_WORDS, r.randint(1, 3))
            lines.append("!!!OTL: " + " ".join(words))
            lines.append("!!!COM: " + r.choice(COMPOSERS))
        lines += ["**kern\t**kern",
                  ("*clefG2" if treble_left else "*clefF4") + "\t*clefG2",
                  f"{key_text(fifths)}\t{key_text(fifths)}",
                  f"*M{num}/{den}\t*M{num}/{den}"]
        for m in range(n_measures):
            if m:
                lines.append("=\t=")
            lines += merge_measure([staves[0][m], staves[1][m]], self.event_text)
        lines += ["==\t==", "*-\t*-"]
        return "\n".join(lines)


def merge_measure(staves: list[list[Event]], text) -> list[str]:
    """Spines with different rhythms -> one line per onset, `.` where a staff holds."""
    onsets: list[dict[Fraction, str]] = []
    for events in staves:
        t, d = Fraction(0), {}
        for ev in events:
            d[t] = text(ev)
            t += ev.dur
        onsets.append(d)
    times = sorted(set().union(*onsets))
    return ["\t".join(o.get(t, ".") for o in onsets) for t in times]


def generate(seed: int | str, kind: str = "system", config: GenConfig | None = None) -> str:
    """The piece for `seed`: the same seed always gives the same text, in any process."""
    cfg = config or PRESETS[kind]
    return PieceGenerator(random.Random(f"smt-synth-{kind}-{seed}"), cfg).piece()


# -- validation (used by tests and by --kern-dir to warn about broken user files) -----------
def measure_durations(kern: str) -> list[list[Fraction]]:
    """Per measure, per spine, the summed duration in quarters (chords count once, `.` zero).

    An independent reading of the text (not of the generator's events), so that tests check
    what verovio will see. Only plain two-spine kern without spine splits is understood.
    """
    import re
    rx = re.compile(r"(\d+)(\.*)")
    measures: list[list[Fraction]] = []
    cur: list[Fraction] | None = None
    for line in kern.split("\n"):
        if not line or line.startswith("!") or line.startswith("*"):
            continue
        fields = line.split("\t")
        if fields[0].startswith("="):
            if cur is not None:
                measures.append(cur)
            cur = None
            continue
        if cur is None:
            cur = [Fraction(0)] * len(fields)
        for i, f in enumerate(fields):
            if f == ".":
                continue
            m = rx.search(f.split(" ")[0])
            if not m:
                raise ValueError(f"no duration in {f!r}")
            d = Fraction(4, int(m.group(1)))
            dots = len(m.group(2))
            d = d * (2 - Fraction(1, 2 ** dots))
            cur[i] += d
    if cur is not None:
        measures.append(cur)
    return measures


def meter_of(kern: str) -> Fraction:
    import re
    m = re.search(r"\*M(\d+)/(\d+)", kern)
    if not m:
        raise ValueError("no time signature")
    return Fraction(4 * int(m.group(1)), int(m.group(2)))
