"""``audiostream devices``: input devices PortAudio can capture from."""
from __future__ import annotations

import json

from .mic import input_devices


def add_parser(sub):
    p = sub.add_parser("devices", help="list input devices (index, name, channels, default rate)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    devices = input_devices()
    if args.json:
        print(json.dumps(devices))
        return 0
    if not devices:
        print("no input devices found (is a microphone connected? is PortAudio able to see it?)")
        return 1
    print(f"{'INDEX':>5}  {'NAME':<40} {'CHANNELS':>8} {'DEFAULT RATE':>12}  HOST API")
    for d in devices:
        print(f"{d['index']:>5}  {d['name'][:40]:<40} {d['channels']:>8} {d['default_samplerate']:>12.0f}  {d['hostapi']}")
    return 0
