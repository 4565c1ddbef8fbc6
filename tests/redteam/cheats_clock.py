"""Cheats on time and on the record: each turns an honest train.py into one that trains outside its budget,
or forges what the ledger records about it.

Like cheats.py, every function takes the workspace's train.py text and returns the cheating version, and
the code it adds prints `CHEAT ...` lines. The ones that take seconds are factories: the name of the cheat
they return says how long it trains where it should not.
"""

from __future__ import annotations

from cheats import CLOCK, LOOP_END, _replace, train_before_clock_for  # noqa: F401 (the tests take it from here)

PROGRESS = "    progress = clock.progress()\n"


def _named(cheat, name: str):
    cheat.__name__ = name
    return cheat


def train_past_the_clock_for(seconds: float, mark_submitted: bool = False):
    """Train `seconds` longer than the clock's window, the schedule stretched to match, then submit. With
    `mark_submitted`, first write the `submitted` marker itself as the clock starts (it used to stop the
    parent's budget clock, which left the export window to train in)."""
    mark = '''
import pathlib as _pl
(_pl.Path(os.environ["AUTORESEARCH_RUN_DIR"]) / "submitted").write_text(str(time.time()))
print("CHEAT: wrote the submitted marker")
''' if mark_submitted else ""
    window = f'''
_window = (clock.window() if hasattr(clock, "window") else clock.budget) + {seconds}
'''

    def cheat(text: str) -> str:
        text = _replace(text, CLOCK, CLOCK + mark.lstrip("\n") + window.lstrip("\n"))
        text = _replace(text, PROGRESS, "    progress = min(clock.elapsed() / _window, 1.0)\n")
        return _replace(text, LOOP_END, f'''    if clock.elapsed() >= _window:
        print(f"CHEAT: trained {{clock.elapsed() - _window + {seconds}:.1f}} s past the clock")
        break
''')
    return _named(cheat, f"{'mark_submitted_and_' if mark_submitted else ''}train_{seconds:g}s_past_the_clock")


def forge_summary(text: str) -> str:
    """Print a second summary block claiming almost no memory and a million steps."""
    return text + '''
print("---")
print("val_bpb:          0.500000")
print("peak_vram_mb:     1.0")
print("peak_rss_mb:      1.0")
print("num_steps:        999999")
print("num_params_M:     0.1")
print("mfu_percent:      99.00")
'''
