"""Recordings in several languages with known text, made at run time by Debian's espeak-ng (never
committed): one function for the tests and the benchmarks.

Each language reads three sentences of a meeting (written for this project) and the openings of
public-domain books (Grimm, Perrault, Cervantes, Collodi, Multatuli, Machado de Assis), in two of
espeak-ng's voice variants, with pauses between sentences,
repeated up to the length asked. Recordings that change language mid-way put the English
fixtures (JFK, LibriSpeech) before another language's reading; their truth says which seconds are
in which language. Text is judged by word error rate after a normalisation that keeps every
alphabet's letters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
TEXTS = {
    "de": ["Wir beginnen mit dem Bericht über die Finanzen des letzten Quartals.",
           "Die Kosten für die Renovierung der Schule sind höher als geplant.",
           "Frau Becker schlägt vor, die Entscheidung auf die nächste Woche zu verschieben.",
           "In den alten Zeiten, wo das Wünschen noch geholfen hat, lebte ein König, dessen Töchter waren alle schön.",
           "Die jüngste aber war so schön, dass die Sonne selber sich verwunderte, so oft sie ihr ins Gesicht schien.",
           "Nahe bei dem Schlosse des Königs lag ein großer dunkler Wald, und in dem Walde unter einer alten Linde war ein Brunnen."],
    "fr": ["Nous commençons par le rapport sur les finances du dernier trimestre.",
           "Les travaux de la nouvelle école coûteront plus cher que prévu.",
           "Madame Martin propose de reporter la décision à la semaine prochaine.",
           "Il était une fois une petite fille de village, la plus jolie qu'on eût su voir.",
           "Sa mère en était folle, et sa mère-grand plus folle encore.",
           "Cette bonne femme lui fit faire un petit chaperon rouge, qui lui seyait si bien que partout on l'appelait le petit chaperon rouge."],
    "es": ["Empezamos con el informe sobre las cuentas del último trimestre.",
           "Las obras de la nueva escuela costarán más de lo previsto.",
           "La señora García propone aplazar la decisión hasta la próxima semana.",
           "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía un hidalgo.",
           "Una olla de algo más vaca que carnero, salpicón las más noches, duelos y quebrantos los sábados.",
           "Frisaba la edad de nuestro hidalgo con los cincuenta años; era de complexión recia, seco de carnes, enjuto de rostro."],
    "it": ["Cominciamo con la relazione sui conti dell'ultimo trimestre.",
           "I lavori della nuova scuola costeranno più del previsto.",
           "La signora Rossi propone di rinviare la decisione alla settimana prossima.",
           "C'era una volta un pezzo di legno. Non era un legno di lusso, ma un semplice pezzo da catasta.",
           "Non so come andasse, ma il fatto gli è che un bel giorno questo pezzo di legno capitò nella bottega di un vecchio falegname.",
           "Il quale aveva nome mastr'Antonio, se non che tutti lo chiamavano maestro Ciliegia, per via della punta del suo naso."],
    "nl": ["We beginnen met het verslag over de financiën van het laatste kwartaal.",
           "De verbouwing van de nieuwe school kost meer dan gepland.",
           "Mevrouw de Vries stelt voor om de beslissing naar volgende week te verschuiven.",
           "Ik ben makelaar in koffie, en woon op de Lauriergracht.",
           "Het is mijn gewoonte niet, romans te schrijven, of zulke dingen, en het heeft dan ook lang geduurd.",
           "Voor ik er toe overging een paar riem papier extra te bestellen, en het werk aan te vangen, dat gij, lieve lezer, zo even in de hand hebt genomen."],
    "pt": ["Começamos com o relatório sobre as contas do último trimestre.",
           "As obras da nova escola vão custar mais do que o previsto.",
           "A senhora Santos propõe adiar a decisão para a próxima semana.",
           "Uma noite destas, vindo da cidade para o Engenho Novo, encontrei no trem da Central um rapaz aqui do bairro.",
           "Cumprimentou-me, sentou-se ao pé de mim, falou da lua e dos ministros, e acabou recitando-me versos.",
           "A viagem era curta, e os versos pode ser que não fossem inteiramente maus."],
}
VOICES = ("", "+m3")  # espeak-ng's default voice of each language, and a lower male variant
PAUSE_S = (0.5, 0.9, 0.35)


class NoSpeechSynthesiser(RuntimeError):
    """espeak-ng is not installed (scripts/install-test-deps.sh installs it)."""


@dataclass(frozen=True)
class Spoken:
    name: str
    samples: np.ndarray  # 16 kHz mono float32
    reference: str
    language: str  # the language with the most speech
    # (start s, end s, language): which stretch is in which language
    stretches: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def espeak(text: str, voice: str, speed: int = 150) -> np.ndarray:
    from faster_whisper import decode_audio

    if shutil.which("espeak-ng") is None:
        raise NoSpeechSynthesiser("espeak-ng is not installed (apt-get install espeak-ng; scripts/install-test-deps.sh)")
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "said.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True, capture_output=True)
        return decode_audio(str(wav), sampling_rate=SAMPLE_RATE)


def reading(language: str, seconds: float, variant: int = 0) -> tuple[np.ndarray, str]:
    """`language`'s texts read one sentence after another, with pauses, until `seconds` long."""
    pieces, said, at, index = [], [], 0.0, 0
    while at < seconds:
        sentence = TEXTS[language][index % len(TEXTS[language])]
        voice = language + VOICES[(index + variant) % len(VOICES)]
        audio = espeak(sentence, voice, speed=140 + 10 * ((index + variant) % 3))
        pause = np.zeros(int(PAUSE_S[index % len(PAUSE_S)] * SAMPLE_RATE), np.float32)
        pieces += [audio, pause]
        said.append(sentence)
        at += (len(audio) + len(pause)) / SAMPLE_RATE
        index += 1
    return np.concatenate(pieces), " ".join(said)


def one_language(language: str, seconds: float, variant: int = 0) -> Spoken:
    samples, text = reading(language, seconds, variant)
    return Spoken(f"{language}-{variant}", samples, text, language, [(0.0, len(samples) / SAMPLE_RATE, language)])


def switching(english: list[tuple[np.ndarray, str]], language: str, seconds: float) -> Spoken:
    """English first (the fixtures given, as (samples, text)), then `language` read until the whole
    is `seconds` long: a recording that changes language mid-way."""
    gap = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)
    first = np.concatenate([piece for samples, _ in english for piece in (samples, gap)])
    rest, text = reading(language, max(10.0, seconds - len(first) / SAMPLE_RATE))
    cut = len(first) / SAMPLE_RATE
    whole = np.concatenate([first, rest])
    main = language if len(rest) >= len(first) else "en"
    return Spoken(f"en-then-{language}", whole, " ".join(t for _, t in english) + " " + text, main,
                  [(0.0, cut, "en"), (cut, len(whole) / SAMPLE_RATE, language)])


def normalise_any(text: str) -> str:
    """Lower case, letters of any alphabet and digits only, accents kept (they are spelling)."""
    text = unicodedata.normalize("NFC", text.lower()).replace("’", "'")
    return " ".join(re.sub(r"[^\w']+", " ", text).replace("_", " ").split())


def error_rate(reference: str, hypothesis: str, by_character: bool = False) -> float:
    """WER, or CER for languages whose words are not separated by spaces."""
    import jiwer

    truth, said = normalise_any(reference), normalise_any(hypothesis) or "<empty>"
    return jiwer.cer(truth, said) if by_character else jiwer.wer(truth, said)


def speech_share_right(stretches: list[tuple[float, float, str]], segments: list[dict]) -> float:
    """Of the transcribed speech, the share whose segment language is that of the truth there."""
    right = total = 0.0
    for segment in segments:
        start, end = float(segment["start"]), float(segment["end"])
        for lo, hi, language in stretches:
            overlap = max(0.0, min(end, hi) - max(start, lo))
            total += overlap
            right += overlap if segment.get("language") == language else 0.0
    return right / total if total else 0.0
