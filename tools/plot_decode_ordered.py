"""Draw the figure of the count-ordered readout for the docs (``docs/_static/decode_ordered.png``).

Three classes (blank, ``a``, ``b``) over ten steps: two ``a`` side by side,
spread over four steps and never above the blank, then one ``b``. The top
panel shows the probabilities, the bottom one each class's cumulative mass
and the places where it crosses ``j - 1/2``: :func:`ace_core.decode_ordered`
reads ``a a b`` there, where :func:`ace_core.decode_greedy` reads ``a``. Run::

    python tools/plot_decode_ordered.py docs/_static/decode_ordered.png
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import ace_core  # noqa: E402

NAMES = ["blank", "a", "b"]
#: y[t] = (blank, a, b)
Y = np.array(
    [
        [0.90, 0.10, 0.00],
        [0.55, 0.45, 0.00],
        [0.52, 0.48, 0.00],
        [0.45, 0.55, 0.00],
        [0.60, 0.40, 0.00],
        [0.90, 0.05, 0.05],
        [0.70, 0.00, 0.30],
        [0.50, 0.00, 0.50],
        [0.85, 0.00, 0.15],
        [1.00, 0.00, 0.00],
    ]
)


def main(path: str) -> None:
    steps = Y.shape[0]
    greedy = ace_core.decode_greedy(Y[None])[0]
    ordered = ace_core.decode_ordered(Y[None], from_logits=False)[0]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 4.8), dpi=120, sharex=True)
    width = 0.4
    for k, color in ((1, "C0"), (2, "C1")):
        top.bar(
            np.arange(steps) + 0.5 + (k - 1.5) * width,
            Y[:, k],
            width,
            color=color,
            label=f"$y_{{t,{NAMES[k]}}}$",
        )
    top.plot(np.arange(steps) + 0.5, Y[:, 0], "k.:", label="$y_{t,\\mathrm{blank}}$")
    top.set_ylabel("probability")
    top.set_ylim(0, 1.3)
    top.legend(loc="upper right", fontsize=8, ncol=3)
    top.set_title(
        f"greedy reads {' '.join(NAMES[k] for k in greedy) or '(nothing)'};  "
        f"count-ordered reads {' '.join(NAMES[k] for k in ordered)}",
        fontsize=10,
    )
    edges = np.arange(steps + 1)
    for k, color in ((1, "C0"), (2, "C1")):
        mass = np.concatenate([[0.0], np.cumsum(Y[:, k])])
        bottom.plot(edges, mass, color=color, label=f"$M_{{{NAMES[k]}}}(t)$")
        for j in range(1, int(np.floor(mass[-1] + 0.5)) + 1):
            t = int(np.argmax(mass[1:] >= j - 0.5))
            place = t + (j - 0.5 - mass[t]) / Y[t, k]
            bottom.plot([place], [j - 0.5], "o", color=color)
            bottom.annotate(
                f"{NAMES[k]}$_{j}$", (place, j - 0.5), textcoords="offset points", xytext=(4, 6), color=color
            )
    for level in (0.5, 1.5):
        bottom.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    bottom.set_yticks([0, 0.5, 1, 1.5, 2])
    bottom.set_ylabel("cumulative mass")
    bottom.set_xlabel("step t")
    bottom.set_xticks(edges)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/_static/decode_ordered.png")
