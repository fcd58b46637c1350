"""The clinicians' app page as served: its assets come from the service, and every rule of its style sheet that
sets both a text colour and a background has a contrast ratio of at least 4.5:1 (WCAG 2.1 AA for body text)."""

from __future__ import annotations

import re

import pytest

from care_companion.serving.pages import PAGES, static_text

AA = 4.5


def _rgb(value: str, variables: dict[str, str]) -> tuple[float, float, float]:
    value = value.strip()
    while value.startswith("var("):
        value = variables[value[4:-1].strip().removeprefix("--")]
    if re.fullmatch(r"#[0-9a-fA-F]{3}", value):
        value = "#" + "".join(c * 2 for c in value[1:])
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise ValueError(f"not a plain colour: {value!r}")
    return tuple(int(value[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _luminance(rgb: tuple[float, float, float]) -> float:
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """The WCAG contrast ratio of two colours."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def colour_pairs(css: str) -> list[tuple[str, str, str]]:
    """(selector, text colour, background) of every rule that sets both."""
    pairs = []
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S)):
        props = dict(
            (k.strip(), v.strip()) for k, v in (p.split(":", 1) for p in body.split(";") if ":" in p)
        )  # fmt: skip
        background = props.get("background") or props.get("background-color")
        if "color" in props and background:
            pairs.append((selector.strip(), props["color"], background.split()[0]))
    return pairs


def test_the_contrast_check_knows_the_wcag_figures() -> None:
    assert contrast((0, 0, 0), (1, 1, 1)) == pytest.approx(21.0)
    assert contrast(_rgb("#767676", {}), (1, 1, 1)) == pytest.approx(4.54, abs=0.01)  # the classic AA grey


def test_every_coloured_rule_of_the_app_reaches_wcag_aa() -> None:
    css = static_text("app.css")
    variables = dict(re.findall(r"--([\w-]+):\s*([^;]+);", css))
    pairs = colour_pairs(css)
    assert len(pairs) >= 10  # the check reads the real style sheet
    body_ink = _rgb("var(--ink)", variables)
    for selector, ink, background in pairs:
        ratio = contrast(_rgb(ink, variables), _rgb(background, variables))
        assert ratio >= AA, f"{selector}: {ink} on {background} is {ratio:.2f}:1"
    muted = contrast(_rgb("var(--muted)", variables), _rgb("var(--paper)", variables))
    assert muted >= AA and contrast(body_ink, _rgb("var(--wash)", variables)) >= AA


def test_the_app_serves_its_own_assets_only() -> None:
    html = static_text(PAGES["/app"][0])
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/app/assets/") or s == "data:," for s in sources)
    assert "<script>" not in html and "style=" not in html  # no inline script or style: the CSP allows none
