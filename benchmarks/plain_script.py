"""The plain faster-whisper script a user would write for a pile of files, and nothing more:
one model, N threads sharing it, each taking the next file; texts written to one JSON file.

bulk_drop.py times it as a whole command (process start to exit: imports, model load, every
file), the way a user times `python transcribe.py *.wav` against a pile dropped on `make dev`.
It imports faster-whisper and the standard library only, so it pays no cost of ours.

    python benchmarks/plain_script.py --model DIR --workers 2 --sequential --out texts.json a.wav b.wav
"""

import argparse
import json
import queue
import threading

from faster_whisper import BatchedInferencePipeline, WhisperModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--device-index", type=int, default=0)
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--cpu-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--language")
    parser.add_argument("--sequential", action="store_true", help="model.transcribe, not batched")
    parser.add_argument("--no-vad", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model = WhisperModel(args.model, device=args.device, device_index=args.device_index,
                         compute_type=args.compute_type, cpu_threads=args.cpu_threads, num_workers=args.workers)
    todo: queue.Queue[str] = queue.Queue()
    for path in args.files:
        todo.put(path)
    texts: dict[str, str] = {}

    def work() -> None:
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            options = dict(beam_size=args.beam_size, language=args.language, vad_filter=not args.no_vad,
                           word_timestamps=True)
            if args.sequential:
                segments, _ = model.transcribe(path, **options)
            else:
                segments, _ = BatchedInferencePipeline(model).transcribe(path, batch_size=args.batch_size, **options)
            texts[path] = " ".join(segment.text for segment in segments)  # the generator does the work

    threads = [threading.Thread(target=work) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(args.out, "w") as out:
        json.dump(texts, out)


if __name__ == "__main__":
    main()
