"""Write the TensorBoard event-file fixture tests/fixtures/tfevents_a/ with the real writer.

The Rust event writer (actors/src/metrics/tensorboard.rs) is written by hand; its test writes the same
events with the same wall times and compares the records byte for byte with this file. The fixture is
produced by `tensorboard.summary.writer.event_file_writer.EventFileWriter` (the TF-free writer that
ships in the `tensorboard` wheel: TFRecord framing + masked crc32c + protobuf `Event`), with
`time.time` pinned while the writer is constructed so that the header event has a fixed wall time.

Regenerate (from the repository root):

    pyenv/bin/pip install -r tools/requirements.txt
    pyenv/bin/python tools/gen_tfevents_fixture.py

Contents (magic/version: the first record is always `file_version = "brain.Event:2"`):
  record 0: header, wall_time HEADER_WALL_TIME, source_metadata.writer = the TensorBoard writer's name
  record 1: session_log START at step RESUME_STEP + 1, wall_time HEADER_WALL_TIME (what a run resumed
            from step RESUME_STEP writes so that TensorBoard hides the orphaned steps > RESUME_STEP of
            older files, as torch's SummaryWriter(purge_step=RESUME_STEP + 1) does)
  records 2..: one scalar each, the table SCALARS below (tag, step, wall_time, value); the edge cases
            are step 0 (omitted field), value 0.0 (kept: it sits in a oneof), negative, NaN and inf
            values, a step past 2^32, a tag longer than 127 bytes (two-byte length varint) and a
            non-ASCII tag.
The output file is renamed to a fixed name so the fixture does not depend on the host name or pid.
"""

import os
import shutil
import sys
from unittest import mock

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HEADER_WALL_TIME = 1700000000.25
RESUME_STEP = 6
SCALARS = [
    ("train/loss", 0, 1700000001.5, 2.75),
    ("train/lr", 1, 1700000002.125, 3.0e-4),
    ("train/loss", 1, 1700000002.125, 0.0),
    ("train/grad_norm", 2, 1700000003.0, -1.5),
    ("eval/ppl_m\u00e9dical", 3, 1700000004.0625, float("nan")),
    ("train/overflow", 4, 1700000005.0, float("inf")),
    ("train/" + "x" * 130, 5, 1700000006.0, 1.0),
    ("train/loss", 5_000_000_000, 1700000007.75, 0.1),
]
FILE_NAME = "events.out.tfevents.1700000000.fixture.0.0"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(root, "tests", "fixtures", "tfevents_a")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    with mock.patch("time.time", return_value=HEADER_WALL_TIME):
        writer = EventFileWriter(out)
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    writer.add_event(event_pb2.Event(wall_time=HEADER_WALL_TIME, step=RESUME_STEP + 1, session_log=start))
    for tag, step, wall_time, value in SCALARS:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=wall_time, step=step, summary=summary))
    writer.close()
    files = os.listdir(out)
    if len(files) != 1:
        sys.exit(f"expected one event file in {out}, found {files}")
    os.rename(os.path.join(out, files[0]), os.path.join(out, FILE_NAME))
    size = os.path.getsize(os.path.join(out, FILE_NAME))
    print(f"wrote {os.path.join(out, FILE_NAME)} ({size} bytes, {len(SCALARS) + 2} records)")


if __name__ == "__main__":
    main()
