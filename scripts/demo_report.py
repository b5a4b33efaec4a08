"""Parts of scripts/demo.sh's report that are easier in Python (standard library only).

    demo_report.py losses METRICS_JSON TRAINER_LOG OUT_PNG [TITLE]
        Train loss per step (metrics.json `history`, written by tailor-trainer next to the
        adapter) and validation loss (the base model's before step 1, the trainer's periodic
        `validation` log records, the final one): a text sparkline per curve on stdout and a PNG
        plot of both at OUT_PNG. Last line of stdout: one JSON object with the numbers.

    demo_report.py pretrain PRETRAIN_JSON
        One line on the pre-trained base model (scripts/pretrain_base.py's last line of output).

    demo_report.py evaluation EVALUATION_JSON
        The lines of `tailor-trainer evaluate`'s evaluation.json worth reading: test loss,
        exact match and token F1 of the base model and the adapter, and the judge's win rate
        with its 95% interval and the pairs it left unjudged.
"""

import json
import math
import struct
import sys
import zlib

BARS = "▁▂▃▄▅▆▇█"


def validation_points(metrics, log_path):
    """(step, loss) of every validation the run measured, the base model's at step 0."""
    points = {}
    if metrics.get("baseValidationLoss") is not None:
        points[0] = metrics["baseValidationLoss"]
    try:
        lines = open(log_path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        lines = []
    for line in lines:  # the trainer's JSON log (one pod per attempt, concatenated)
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        f = rec.get("fields", {}) if isinstance(rec, dict) else {}
        if f.get("message") == "validation" and "step" in f and "validation_loss" in f:
            points[int(f["step"])] = float(f["validation_loss"])
    if metrics.get("validationLoss") is not None and metrics.get("steps"):
        points[int(metrics["steps"])] = metrics["validationLoss"]
    return sorted(points.items())


def buckets(values, width):
    """`values` averaged down to at most `width` buckets."""
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        lo, hi = i * len(values) // width, (i + 1) * len(values) // width
        out.append(sum(values[lo:hi]) / (hi - lo))
    return out


def sparkline(values, lo, hi):
    span = (hi - lo) or 1.0
    return "".join(BARS[min(len(BARS) - 1, max(0, int((v - lo) / span * len(BARS))))] for v in values)


# A 5x7 bitmap font for the plot's labels (rows top to bottom, '#' = ink).
FONT = {
    "0": [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    "1": ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    "2": [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    "3": ["####.", "....#", "....#", ".###.", "....#", "....#", "####."],
    "4": ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    "5": ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    "6": [".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."],
    "7": ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    "8": [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    "9": [".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."],
    ".": [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."],
    "-": [".....", ".....", ".....", ".###.", ".....", ".....", "....."],
    ":": [".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."],
    "(": ["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."],
    ")": [".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."],
    " ": ["....."] * 7,
    "a": [".....", ".....", ".###.", "....#", ".####", "#...#", ".####"],
    "b": ["#....", "#....", "####.", "#...#", "#...#", "#...#", "####."],
    "c": [".....", ".....", ".###.", "#....", "#....", "#...#", ".###."],
    "d": ["....#", "....#", ".####", "#...#", "#...#", "#...#", ".####"],
    "e": [".....", ".....", ".###.", "#...#", "#####", "#....", ".###."],
    "f": ["..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."],
    "g": [".....", ".####", "#...#", "#...#", ".####", "....#", ".###."],
    "h": ["#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"],
    "i": ["..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."],
    "k": ["#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."],
    "l": [".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."],
    "m": [".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"],
    "n": [".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"],
    "o": [".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."],
    "p": [".....", ".....", "####.", "#...#", "####.", "#....", "#...."],
    "r": [".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."],
    "s": [".....", ".....", ".####", "#....", ".###.", "....#", "####."],
    "t": [".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."],
    "u": [".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"],
    "v": [".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."],
    "w": [".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."],
    "x": [".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
    "y": [".....", ".....", "#...#", "#...#", ".####", "....#", ".###."],
}


class Canvas:
    def __init__(self, w, h, bg=(255, 255, 255)):
        self.w, self.h = w, h
        self.px = [bytearray(bg * w) for _ in range(h)]

    def set(self, x, y, c):
        if 0 <= x < self.w and 0 <= y < self.h:
            self.px[y][3 * x : 3 * x + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        for y in range(max(0, y0), min(self.h, y1 + 1)):
            for x in range(max(0, x0), min(self.w, x1 + 1)):
                self.set(x, y, c)

    def line(self, x0, y0, x1, y1, c, width=1):
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(n + 1):
            x = round(x0 + (x1 - x0) * i / n)
            y = round(y0 + (y1 - y0) * i / n)
            self.rect(x - width // 2, y - width // 2, x + (width - 1) // 2, y + (width - 1) // 2, c)

    def text(self, x, y, s, c=(40, 40, 40)):
        for ch in s:
            glyph = FONT.get(ch, FONT.get(ch.lower(), FONT[" "]))
            for dy, row in enumerate(glyph):
                for dx, v in enumerate(row):
                    if v == "#":
                        self.set(x + dx, y + dy, c)
            x += 6
        return x

    def png(self, path):
        raw = b"".join(b"\x00" + bytes(row) for row in self.px)

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")
            f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)))
            f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
            f.write(chunk(b"IEND", b""))


def nice_ticks(lo, hi, n=5):
    step = 10 ** math.floor(math.log10(max((hi - lo) / n, 1e-9)))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-9:
        out.append(round(t, 6))
        t += step
    return out


def fmt(v):
    return f"{v:g}" if abs(v - round(v)) < 1e-9 else f"{v:.1f}" if abs(v * 10 - round(v * 10)) < 1e-6 else f"{v:.2f}"


TRAIN, VALID = (66, 110, 200), (230, 120, 30)


def plot(path, train, valid, title):
    W, H, left, right, top, bottom = 560, 300, 48, 16, 26, 34
    c = Canvas(W, H)
    steps = [s for s, _ in train] + [s for s, _ in valid]
    losses = [l for _, l in train] + [l for _, l in valid]
    x_lo, x_hi = 0, max(steps) or 1
    y_lo, y_hi = min(losses), max(losses)
    pad = (y_hi - y_lo) * 0.05 or 0.5
    y_lo, y_hi = max(0.0, y_lo - pad), y_hi + pad
    X = lambda s: left + round((s - x_lo) / (x_hi - x_lo) * (W - left - right))
    Y = lambda l: top + round((y_hi - l) / (y_hi - y_lo) * (H - top - bottom))
    for t in nice_ticks(y_lo, y_hi):
        c.line(left, Y(t), W - right, Y(t), (232, 232, 232))
        label = fmt(t)
        c.text(left - 6 - 6 * len(label), Y(t) - 3, label)
    for t in nice_ticks(x_lo, x_hi, 6):
        c.line(X(t), top, X(t), H - bottom, (240, 240, 240))
        label = fmt(t)
        c.text(X(t) - 3 * len(label), H - bottom + 6, label)
    c.line(left, top, left, H - bottom, (90, 90, 90))
    c.line(left, H - bottom, W - right, H - bottom, (90, 90, 90))
    c.text((W - 6 * 4) // 2, H - 12, "step")
    c.text(4, 6, "loss")
    c.text(left + 8, 6, title)
    for (s0, l0), (s1, l1) in zip(train, train[1:]):
        c.line(X(s0), Y(l0), X(s1), Y(l1), TRAIN)
    for (s0, l0), (s1, l1) in zip(valid, valid[1:]):
        c.line(X(s0), Y(l0), X(s1), Y(l1), VALID, width=2)
    for s, l in valid:
        c.rect(X(s) - 2, Y(l) - 2, X(s) + 2, Y(l) + 2, VALID)
    x = W - right - 6 * 22
    c.line(x, 9, x + 14, 9, TRAIN, width=2)
    x = c.text(x + 18, 6, "train") + 12
    c.line(x, 9, x + 14, 9, VALID, width=2)
    c.text(x + 18, 6, "validation")
    c.png(path)


def losses(metrics_path, log_path, out_png, title="support-v1"):
    with open(metrics_path) as f:
        metrics = json.load(f)
    train = [(int(h["step"]), float(h["loss"])) for h in metrics.get("history", [])]
    valid = validation_points(metrics, log_path)
    if not train:
        raise SystemExit(f"{metrics_path}: no per-step history")
    lo = min(l for _, l in train + valid)
    hi = max(l for _, l in train + valid)
    t = buckets([l for _, l in train], 60)
    v = [l for _, l in valid]
    per = f"~{math.ceil(len(train) / len(t))} steps per bar" if len(t) < len(train) else "one bar per step"
    print(f"  train loss       {train[0][1]:5.2f} {sparkline(t, lo, hi)} {train[-1][1]:.2f}   ({len(train)} steps, {per})")
    print(f"  validation loss  {v[0]:5.2f} {sparkline(v, lo, hi)} {v[-1]:.2f}   (steps {', '.join(str(s) for s, _ in valid)}; step 0 is the base model)")
    plot(out_png, train, valid, title)
    print(f"  plot: {out_png}")
    print(json.dumps({"steps": len(train), "trainFirst": train[0][1], "trainLast": train[-1][1], "validation": valid}))


def pretrain(path):
    with open(path) as f:
        p = json.load(f)
    print(
        f"{p['parameters'] / 1e6:.1f} M-parameter Llama pre-trained in {p['trainSeconds']:.0f} s "
        f"({p['steps']} steps; {p['corpusCharacters'] / 1e6:.1f} M characters of licences and manuals from /usr/share): "
        f"held-out loss {p['heldOutLossStart']:.2f} -> {p['heldOutLossEnd']:.2f}"
    )


def evaluation(path):
    with open(path) as f:
        e = json.load(f)
    b, a = e.get("base", {}), e.get("adapter", {})

    def num(d, k, f="{:.3f}"):
        return f.format(d[k]) if d.get(k) is not None else "n/a"

    print(f"  {e.get('examples', 0)} test examples ({e.get('answered', 0)} answered by both), greedy, at most {e.get('decoding', {}).get('maxNewTokens', '?')} new tokens; {e.get('seconds', 0):.0f} s")
    print(f"  test loss    base {num(b, 'testLoss')} (perplexity {num(b, 'perplexity', '{:.1f}')})  ->  adapter {num(a, 'testLoss')} (perplexity {num(a, 'perplexity', '{:.1f}')})")
    print(f"  exact match  base {num(b, 'exactMatch', '{:.2f}')}  adapter {num(a, 'exactMatch', '{:.2f}')};  token F1  base {num(b, 'tokenF1', '{:.2f}')}  adapter {num(a, 'tokenF1', '{:.2f}')}")
    j = e.get("judge")
    if not j:
        print("  judge: none")
        return
    if j.get("winRate") is not None:
        rate = f"win rate {j['winRate']:.2f} (95% CI {j['winRateLower']:.2f}-{j['winRateUpper']:.2f})"
    else:
        rate = "win rate n/a (no pair judged)"
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(j.get("failureKinds", {}).items()))
    print(
        f"  judge '{j.get('model')}': {rate}; {j.get('wins', 0)} wins / {j.get('ties', 0)} ties / {j.get('losses', 0)} losses"
        f" of {j.get('judged', 0)} judged pairs, {j.get('unjudged', 0)} of {j.get('pairs', 0)} unjudged"
        + (f" ({kinds})" if kinds else "")
    )
    if j.get("judged"):
        print(
            f"  verdicts by position: the adapter won {j.get('winsAsA', 0)} of {j['judged']} orders shown first, "
            f"{j.get('winsAsB', 0)} shown second (a judge that follows position makes each pair a tie)"
        )
    if not j.get("judged") and set(j.get("failureKinds", {})) == {"malformed verdict"}:
        print("  (the judge never wrote the JSON verdict its prompt asks for: a judge too small for that needs")
        print("   judge.structuredOutputs, or an instruction-following model)")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"losses": losses, "pretrain": pretrain, "evaluation": evaluation}[cmd](*args)
