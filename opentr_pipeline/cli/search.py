"""`opentr search`: the transcripts' speaker turns by what was said, who said it and when."""

from __future__ import annotations

import argparse
import json

from opentr_pipeline.outputs.search import Filters, QueryError, open_search
from opentr_pipeline.settings import Settings, mask_url

EPILOG = """query syntax: words (all must be there), "an exact phrase", prefix*, OR, NOT (upper case);
case and accents do not matter, and English words match their other forms (agreed ~ agree). A plain
question whose words no turn holds together gets the turns closest in meaning (SEARCH_MEANING=false: not).

examples:
  opentr search budget launch
  opentr search '"the launch date"' --speaker Maria --since 2026-11-01
  opentr search 'budget NOT travel' --file team/weekly --json
  opentr search --rebuild          # the index made again from every transcript

exit codes: 0 hits printed (or none found), 2 bad settings or a query that cannot be searched"""


def add_search_parser(commands) -> None:
    search = commands.add_parser("search", help="find a moment: transcripts by what was said, who said it, when",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                                 description="Search every transcript's speaker turns (the search_index asset, kept "
                                             "as each file is done). Each hit: file, start and end second, speaker, "
                                             "language, and the text with the matched words marked.")
    search.add_argument("query", nargs="*", help="what was said")
    search.add_argument("--speaker", help="only this speaker's turns (a name given, or an id such as SPEAKER_00)")
    search.add_argument("--file", help="only this file, or the files in this folder (their partition keys)")
    search.add_argument("--language", help="only turns in this language (en, de, ...)")
    search.add_argument("--since", help="only files transcribed on or after this date (2026-11-01)")
    search.add_argument("--limit", type=int, default=20, help="at most this many hits (default 20)")
    search.add_argument("--json", action="store_true",
                        help="print a JSON list of hits (source_uri, start, end, speaker, text, ...)")
    search.add_argument("--rebuild", action="store_true", help="make the index again from every transcript")
    page = commands.add_parser(
        "search-page", help="serve the search page (opentr dev starts it beside the UI)",
        description="The search page: hits as you type, a click plays the recording from that second (files "
                    "from under UPLOAD_URI only; S3 through links that expire in minutes).",
        epilog="settings: OPENTR_SEARCH_HOST (default 127.0.0.1: this machine only), OPENTR_SEARCH_PORT "
               "(default 3030), SEARCH_URI, UPLOAD_URI")
    page.add_argument("--host", help="address to listen on (default OPENTR_SEARCH_HOST)")
    page.add_argument("--port", type=int, help="port (default OPENTR_SEARCH_PORT)")
    page.add_argument("--dagster-url", default="", help="the Dagster UI, for each hit's link to its partition")


def clock(seconds: float) -> str:
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(int(minutes), 60)
    return f"{hours:02d}:{minute:02d}:{second:04.1f}"


def search_command(settings: Settings, args: argparse.Namespace) -> int:
    index = open_search(settings.search_uri, settings.storage_uri, meaning=settings.search_meaning)
    try:
        return answer(index, settings, args)
    except QueryError as error:
        print(f"opentr search: {error}")
    except OSError as error:  # the index's file or server: named, never a traceback
        print(f"opentr search: the index at {index.where} cannot be used: {error}")
    except Exception as error:
        if type(error).__module__.split(".")[0] != "psycopg2":
            raise
        print(f"opentr search: the index at {index.where} cannot be used: {mask_url(str(error)).strip()}")
    return 2


def answer(index, settings: Settings, args: argparse.Namespace) -> int:
    from opentr_pipeline.storage import Storage

    if args.rebuild:
        records, skipped = Storage(settings.storage_uri).list_records("transcripts")
        files, turns = index.rebuild(records, settings.upload_uri)
        print(f"indexed {files} transcript(s), {turns} speaker turn(s): {index.where}")
        for uri, reason in skipped.items():
            print(f"  skipped {uri}: {reason}")
        if not args.query:
            return 0
    if not args.query:
        print("opentr search: give something to search for (opentr search -h)")
        return 2
    query = " ".join(args.query)
    hits = index.search(query, Filters(args.speaker, args.file, args.language, args.since), args.limit)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        empty = not index.files()
        print(f"no hits for {query!r}" + (f" (the index at {index.where} is empty: opentr run, or opentr search --rebuild)"
                                           if empty else ""))
        return 0
    print(f"{len(hits)} hit(s) for {query!r}{' (the first ' + str(args.limit) + ')' if len(hits) == args.limit else ''}:\n")
    if hits[0].found_by == "meaning":
        print("no turn has all of these words; the turns closest in meaning:\n")
    for hit in hits:
        print(f"{hit.path}  {clock(hit.start)}-{clock(hit.end)}  {hit.speaker or '(speakers off)'}  [{hit.language}]")
        print(f"    {hit.marked}")
        print(f"    {hit.source_uri}#t={hit.start:.1f}\n")
    return 0


def serve_search_page(settings: Settings, args: argparse.Namespace) -> int:
    from opentr_pipeline.outputs.search_page import serve

    port = args.port if args.port is not None else settings.search_page_port
    serve(settings, args.host or settings.search_page_host, port or 3030, args.dagster_url)
    return 0
