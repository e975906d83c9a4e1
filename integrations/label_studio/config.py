"""Labeling config for the review project: an `Image` and `BrushLabels` over a taxonomy.

Label Studio draws every region in the colour of its label, so proposals carry
neutral *proposal labels* `region-1` .. `region-6`, each with its own colour from a
qualitative palette; the push gives touching proposals different ones (greedy colouring
of the region adjacency graph, `predictions.colour_regions`). The moderation taxonomy
follows, each label with a hotkey (1-7), so relabelling a selected region is one key
or one click. `region` (the old single neutral label) stays in the config so older
tasks still render. Label Studio accepts prediction labels that are not in the config,
so `validate_labels` checks on our side.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

NEUTRAL_LABEL = "region"

# Proposal colours: vivid hues that photographs rarely show and that stay apart from the
# moderation colours below (no red, orange, yellow, green, teal, blue or grey).
PROPOSAL_PALETTE: tuple[str, ...] = ("#FF00FF", "#00E5FF", "#B2FF00", "#8A2BE2", "#FF7F50", "#A0522D")


def proposal_label(neutral: str, index: int) -> str:
    """The name of proposal colour `index` (0-based): `region-1`, `region-2`, ..."""
    return f"{neutral}-{index + 1}"


def is_proposal_label(label: str, neutral: str = NEUTRAL_LABEL) -> bool:
    """True for the neutral label itself and its coloured variants (`region`, `region-3`)."""
    if label == neutral:
        return True
    head, _, tail = label.rpartition("-")
    return head == neutral and tail.isdigit()


# label -> colour in the editor. Vivid, distinct colours; `region` is magenta, a
# colour that photographs rarely contain (the browser test looks for it).
DEFAULT_TAXONOMY: dict[str, str] = {
    NEUTRAL_LABEL: "#FF00FF",
    "nudity": "#FF3B30",
    "violence": "#FF9500",
    "weapon": "#FFCC00",
    "drugs": "#34C759",
    "hate-symbol": "#00C7BE",
    "personal-data": "#007AFF",
    "safe": "#8E8E93",
}


class LabelConfigError(ValueError):
    """A label we would send is not in the project's labeling config (or the config is unusable)."""


@dataclass(frozen=True)
class LabelingConfig:
    taxonomy: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TAXONOMY))
    neutral_label: str = NEUTRAL_LABEL
    from_name: str = "tag"
    to_name: str = "image"
    image_key: str = "image"  # task data key holding the image reference
    palette: tuple[str, ...] = PROPOSAL_PALETTE  # one proposal label per colour; () = one neutral label only

    def __post_init__(self) -> None:
        if not self.taxonomy:
            raise LabelConfigError("taxonomy is empty")
        if self.neutral_label not in self.taxonomy:
            raise LabelConfigError(f"neutral label {self.neutral_label!r} is not in the taxonomy")

    @classmethod
    def from_labels(cls, labels: list[str], **kw) -> "LabelingConfig":
        """A taxonomy from plain label names (colours cycle through the defaults); adds the neutral label."""
        palette = list(DEFAULT_TAXONOMY.values())
        neutral = kw.get("neutral_label", NEUTRAL_LABEL)
        names = [neutral] + [n for n in labels if n != neutral]
        return cls(taxonomy={n: palette[i % len(palette)] for i, n in enumerate(names)}, **kw)

    @property
    def proposal_labels(self) -> list[str]:
        """The coloured neutral labels, in palette order (empty: every proposal gets the neutral label)."""
        return [proposal_label(self.neutral_label, i) for i in range(len(self.palette))]

    @property
    def moderation_labels(self) -> list[str]:
        return [lab for lab in self.taxonomy if lab != self.neutral_label]

    @property
    def labels(self) -> list[str]:
        """The taxonomy: the neutral label and the moderation labels."""
        return list(self.taxonomy)

    @property
    def config_labels(self) -> list[str]:
        """Every label the labeling config defines: the proposal labels, then the taxonomy."""
        return self.proposal_labels + list(self.taxonomy)

    def colours(self) -> dict[str, str]:
        """label -> colour, as the editor draws them."""
        return {**dict(zip(self.proposal_labels, self.palette)), **self.taxonomy}

    def xml(self) -> str:
        lines = [
            "<View>",
            f"  <Image name={quoteattr(self.to_name)} value={quoteattr('$' + self.image_key)} zoom=\"true\"/>",
            f"  <BrushLabels name={quoteattr(self.from_name)} toName={quoteattr(self.to_name)}>",
        ]
        # moderation labels first, with hotkeys 1..9: select a region, press the key to relabel it
        for i, label in enumerate(self.moderation_labels):
            hotkey = f" hotkey={quoteattr(str(i + 1))}" if i < 9 else ""
            lines.append(f"    <Label value={quoteattr(label)} background={quoteattr(self.taxonomy[label])}{hotkey}/>")
        for label, colour in zip(self.proposal_labels, self.palette):
            lines.append(f"    <Label value={quoteattr(label)} background={quoteattr(colour)}/>")
        lines.append(f"    <Label value={quoteattr(self.neutral_label)} background={quoteattr(self.taxonomy[self.neutral_label])}/>")
        lines += ["  </BrushLabels>", "</View>"]
        return "\n".join(lines)


def brush_tags(xml: str) -> tuple[str, str, str, list[str]]:
    """(BrushLabels name, its Image name, the Image's task data key, the labels) of a labeling config.

    Takes the first `BrushLabels` whose `toName` is an `Image`; raises LabelConfigError
    naming what is missing when the config has none.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"labeling config is not valid XML: {e}") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag.lower() == "image"}
    if not images:
        raise LabelConfigError("labeling config has no <Image> tag: CLASP proposes regions on images only")
    for el in root.iter():
        if el.tag.lower() == "brushlabels":
            to = el.get("toName", "")
            if to in images:
                labels = [lab.get("value") for lab in el.iter() if lab.tag.lower() == "label" and lab.get("value")]
                if not labels:
                    raise LabelConfigError(f"<BrushLabels name={el.get('name')!r}> has no <Label> values")
                return el.get("name", ""), to, images[to].lstrip("$"), labels
    raise LabelConfigError(
        "labeling config has no <BrushLabels toName=...> over an <Image>: CLASP proposes brush regions "
        "(add e.g. <BrushLabels name=\"tag\" toName=\"image\"><Label value=\"region\"/></BrushLabels>)"
    )


def labels_in_config(xml: str, from_name: str) -> set[str]:
    """The label values of the `BrushLabels` control named `from_name` in a labeling config."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise LabelConfigError(f"labeling config is not valid XML: {e}") from None
    for el in root.iter():
        if el.tag.lower() == "brushlabels" and el.get("name") == from_name:
            return {lab.get("value") for lab in el.iter() if lab.tag.lower() == "label" and lab.get("value")}
    raise LabelConfigError(f"labeling config has no <BrushLabels name={from_name!r}>")


def validate_labels(labels, xml: str, from_name: str) -> None:
    """Raise LabelConfigError naming every label that the config does not define."""
    known = labels_in_config(xml, from_name)
    missing = sorted(set(labels) - known)
    if missing:
        raise LabelConfigError(
            f"labels {missing} are not in the labeling config of <BrushLabels name={from_name!r}> "
            f"(known: {sorted(known)})"
        )


def validate_prediction(prediction: dict, xml: str, from_name: str) -> None:
    labels = set()
    for r in prediction.get("result", []):
        if r.get("from_name") != from_name:
            raise LabelConfigError(f"result from_name {r.get('from_name')!r} is not {from_name!r}")
        labels.update(r.get("value", {}).get("brushlabels", []))
    validate_labels(labels, xml, from_name)
