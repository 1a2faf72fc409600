"""From a validated `ChatCompletionRequest` to one `describe` item (`DescribeJob`).

Checks at the edge: images decode, masks have their image's size, RLE decodes, placeholders and
regions agree; each failure is a 400 naming the field. A message may hold several `image_url` parts
(the official image mode): a region's `"image"` picks its image by index among them, in message order
(default 0); the images go first in the prompt, in order, unless the text places one `<image>` per
image. The Describe Anything convention (one image): with no `regions` field, an RGBA image's alpha
channel is the region (nonzero alpha = inside), and a question without `<region>` gets it where the
image part stands (`<image>` in the text, as DAM clients write, also marks that place).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..processing_pixelrefer_fast import REGION_PLACEHOLDER
from .errors import APIError, bad_request
from .media import VideoFile, decode_image, mask_from_png, mask_from_value, read_url
from .schema import ChatCompletionRequest, Region

DEFAULT_SEED = 0
IMAGE_MARKER = "<image>"
_IMAGE_PART = "\x00image part\x00"  # where an image part stands in the joined text


@dataclass
class SamplingParams:
    """Per-request decoding options: `temperature` 0 (or below `describe`'s `MIN_TEMPERATURE`) = greedy;
    `seed` seeds both the k-means init and the sampler of this request only."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = DEFAULT_SEED
    stop: list[str] = field(default_factory=list)


@dataclass
class DescribeJob:
    """One `describe` item and its options. `image` (HWC uint8, or a list of them with `image_ids`, the
    image of each mask) or `video` (a file) is set."""

    question: str
    masks: list[np.ndarray]
    sampling: SamplingParams
    image: np.ndarray | list[np.ndarray] | None = None
    video: VideoFile | None = None
    frame_ids: list[int] | None = None
    image_ids: list[int] | None = None

    def close(self) -> None:
        """Release the job's temporary files."""
        if self.video is not None:
            self.video.close()


@dataclass
class ParseOptions:
    """Server settings the parser needs."""

    model_name: str
    default_max_tokens: int
    max_tokens_limit: int
    allow_dir: Path | None = None


def _user_message(request: ChatCompletionRequest):
    if len(request.messages) != 1 or request.messages[0].role != "user":
        roles = [m.role for m in request.messages]
        raise bad_request(f"send exactly one message, with role 'user' (got roles {roles}); the model's chat "
                          "template and system prompt are fixed, and multi-turn chats are not supported", "messages")
    return request.messages[0]


def _sampling(request: ChatCompletionRequest, options: ParseOptions) -> SamplingParams:
    budget = request.max_tokens or request.max_completion_tokens or options.default_max_tokens
    if budget > options.max_tokens_limit:
        name = "max_tokens" if request.max_tokens is not None else "max_completion_tokens"
        raise bad_request(f"{name}={budget} exceeds this server's limit of {options.max_tokens_limit}", name)
    return SamplingParams(
        max_tokens=budget,
        temperature=0.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=DEFAULT_SEED if request.seed is None else request.seed,
        stop=list(request.stop or []),
    )


def parse_request(request: ChatCompletionRequest, options: ParseOptions) -> DescribeJob:
    """Decode the media and regions of `request` into a `DescribeJob`; 400/404 `APIError` on bad input."""
    if request.model != options.model_name:
        raise APIError(404, f"model {request.model!r} does not exist; this server serves {options.model_name!r}",
                       param="model", code="model_not_found")
    sampling = _sampling(request, options)
    message = _user_message(request)
    texts: list[str] = []
    images: list[tuple[int, object]] = []  # (part index, DecodedImage)
    video: VideoFile | None = None
    for index, part in enumerate(message.content):
        param = f"messages[0].content[{index}]"
        if part.type == "text":
            texts.append(part.text)
        elif part.type == "image_url":
            data, _, _ = read_url(part.image_url.url, param, options.allow_dir)
            images.append((index, decode_image(data, param)))
            texts.append(_IMAGE_PART)
        else:
            if video is not None:
                raise bad_request("only one video per request", param)
            data, mime, local = read_url(part.video_url.url, param, options.allow_dir)
            video = VideoFile(data, mime, local, param)
            texts.append("")
    try:
        return _build_job(request, options, sampling, texts, images, video)
    except BaseException:
        if video is not None:
            video.close()
        raise


def _build_job(request, options, sampling, texts, images, video) -> DescribeJob:
    if video is not None and images:
        raise bad_request("send either images or one video, not both", "messages[0].content")
    if video is None and not images:
        raise bad_request("the message has no image_url or video_url part; a region question needs one",
                          "messages[0].content")
    if request.frame_ids is not None and video is None:
        raise bad_request("frame_ids applies to video requests only", "frame_ids")
    decoded = [image for _, image in images]
    regions = request.regions
    image_ids = None
    if regions is None and len(decoded) == 1 and decoded[0].alpha is not None:
        masks = [(decoded[0].alpha > 0).astype(np.uint8)]
        question = _dam_question(texts)
    else:
        masks, image_ids = _region_masks(regions or [], decoded, options.allow_dir)
        question = "\n".join(t for t in texts if t and t != _IMAGE_PART)
    found = question.count(REGION_PLACEHOLDER)
    if found != len(masks):
        raise bad_request(f"the text has {found} {REGION_PLACEHOLDER!r} placeholder(s) but {len(masks)} region(s) "
                          f"were given; put one {REGION_PLACEHOLDER!r} per entry of 'regions', in order", "regions")
    frame_ids = None
    if video is not None:
        frame_ids = _frame_ids(request.frame_ids, len(masks))
    if len(decoded) > 1:
        return DescribeJob(question=question, masks=masks, sampling=sampling, image=[d.rgb for d in decoded],
                           image_ids=image_ids)
    return DescribeJob(question=question, masks=masks, sampling=sampling,
                       image=decoded[0].rgb if decoded else None, video=video, frame_ids=frame_ids)


def _dam_question(texts: list[str]) -> str:
    """The DAM convention: the alpha mask is the one region; it goes where the image stands, unless
    the text already has a `<region>` (a DAM client's literal `<image>` is that place)."""
    own_marker = any(IMAGE_MARKER in t for t in texts)
    text = "\n".join(t for t in texts if t and not (own_marker and t == _IMAGE_PART))
    if REGION_PLACEHOLDER in text:
        return text.replace(_IMAGE_PART, "").replace(IMAGE_MARKER, "").strip()
    if own_marker:
        return text.replace(IMAGE_MARKER, REGION_PLACEHOLDER, 1).replace(IMAGE_MARKER, "")
    return text.replace(_IMAGE_PART, REGION_PLACEHOLDER)


def _region_masks(regions: list[Region], decoded: list, allow_dir: Path | None) -> tuple[list[np.ndarray], list[int]]:
    """Each region's mask at its image's size, and its image's index (`decoded`: the message's images)."""
    masks, image_ids = [], []
    for r, region in enumerate(regions):
        param = f"regions[{r}]"
        index = region.image or 0
        if decoded and index >= len(decoded):
            raise bad_request(f"image index {index} is out of range: the message has {len(decoded)} image(s) "
                              f"(indices 0..{len(decoded) - 1}, in message order)", f"{param}.image")
        if not decoded and index > 0:
            raise bad_request("'image' picks one of the message's images; a video request has none (its regions "
                              "take 'frame_ids')", f"{param}.image")
        image_ids.append(index)
        if not decoded:
            if region.box is not None:
                raise bad_request("boxes need an image; for video regions send 'rle' or 'mask_png'", f"{param}.box")
            height = width = None
        else:
            height, width = decoded[index].rgb.shape[:2]
        if region.box is not None:
            masks.append(mask_from_value(region.box, height, width, f"{param}.box"))
        elif region.rle is not None:
            masks.append(mask_from_value(region.rle.model_dump(), height, width, f"{param}.rle"))
        else:
            masks.append(mask_from_png(region.mask_png, height, width, f"{param}.mask_png", allow_dir))
    return masks, image_ids


def _frame_ids(frame_ids: list[int] | None, regions: int) -> list[int] | None:
    if regions == 0:
        return None
    if frame_ids is None:
        raise bad_request("a video request with regions needs 'frame_ids' (the frame of each region)", "frame_ids")
    if len(frame_ids) not in (1, regions):
        raise bad_request(f"'frame_ids' has {len(frame_ids)} entries for {regions} regions (give one per region, "
                          "or one for all)", "frame_ids")
    if any(f < 0 for f in frame_ids):
        raise bad_request(f"frame ids must be >= 0, got {frame_ids}", "frame_ids")
    return frame_ids * regions if len(frame_ids) == 1 else list(frame_ids)
