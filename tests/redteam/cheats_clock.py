"""Cheats on time and on the record: each turns an honest train.py into one that trains outside its budget,
or forges what the ledger records about it.

Like cheats.py, every function takes the workspace's train.py text and returns the cheating version, and
the code it adds prints `CHEAT ...` lines. The ones that take seconds are factories: the name of the cheat
they return says how long it trains where it should not.
"""

from __future__ import annotations

from cheats import CLOCK, LOOP_END, _before, _replace

PROGRESS = "    progress = clock.progress()\n"

# A real optimizer step with the learning rates the loop would use at its start (the template's warm-up
# leaves every learning rate at 0).
_STEP = '''
    for _g in optimizer.param_groups:
        _g["lr"] = _g["initial_lr"]
    with autocast_ctx:
        _loss = train_model(x, y)
    _loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    x, y, epoch = next(train_loader)
'''


def _named(cheat, name: str):
    cheat.__name__ = name
    return cheat


def train_before_clock_for(seconds: float):
    """Train for `seconds` before start_clock() (the start-up window), then run the honest loop."""
    def cheat(text: str) -> str:
        return _before(text, CLOCK, f'''
_t_cheat, _steps_cheat = time.time(), 0
while time.time() - _t_cheat < {seconds}:{_STEP}    _steps_cheat += 1
print(f"CHEAT: trained {{time.time() - _t_cheat:.1f}} s ({{_steps_cheat}} steps) before the clock")
''')
    return _named(cheat, f"train_{seconds:g}s_before_clock")


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
