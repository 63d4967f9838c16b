"""`storyboard.png`: a frame of every clip with its number, time and prompt; a film in chapters stacks its
chapters' storyboards."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .film_video import FilmFrames

STORYBOARD_COLUMNS = 4
THUMB_WIDTH = 256  # widest thumbnail; smaller films are shown at their own size
CAPTION_WIDTH = 200  # narrowest caption column, so tiny films still get readable prompts
CAPTION_LINES = 8  # longer prompts are cut with "..." (the full text is in film.srt and manifest.json)
MARGIN = 8
FONT_SIZE = 13


def _caption_lines(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels (a longer word keeps a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > CAPTION_LINES:
        last = lines[CAPTION_LINES - 1].split()
        while len(last) > 1 and font.getlength(" ".join(last) + " ...") > width:
            last.pop()
        lines = [*lines[: CAPTION_LINES - 1], " ".join(last) + " ..."]
    return lines


def _clock(seconds: float) -> str:
    """`m:ss.s`, for storyboard captions."""
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def draw_storyboard(film: FilmFrames, prompts: list[str], fps: float) -> Image.Image:
    """A grid of one frame per clip (the middle of what it contributes), its number, time and prompt below.

    Up to `STORYBOARD_COLUMNS` cells a row; thumbnails are at most `THUMB_WIDTH` wide.
    """
    font = ImageFont.load_default(size=FONT_SIZE)
    line_height = FONT_SIZE + 4
    height, width = film.part_frames(0).shape[1:3]
    thumb_width = min(width, THUMB_WIDTH)
    thumb_height = round(height * thumb_width / width)
    cell_width = max(thumb_width, CAPTION_WIDTH) + 2 * MARGIN
    captions = [
        [
            f"clip {k}   {_clock(span.start / fps)} - {_clock(span.stop / fps)}",
            *_caption_lines(prompt, font, cell_width - 2 * MARGIN),
        ]
        for k, (prompt, span) in enumerate(zip(prompts, film.spans, strict=True))
    ]
    columns = min(STORYBOARD_COLUMNS, len(captions))
    rows = [range(start, min(start + columns, len(captions))) for start in range(0, len(captions), columns)]
    row_heights = [
        MARGIN + thumb_height + MARGIN + max(len(captions[k]) for k in row) * line_height + MARGIN for row in rows
    ]
    sheet = Image.new("RGB", (columns * cell_width, sum(row_heights)), "white")
    draw = ImageDraw.Draw(sheet)
    top = 0
    for row, row_height in zip(rows, row_heights, strict=True):
        for column, k in enumerate(row):
            left = column * cell_width
            span = film.spans[k]
            frame = Image.fromarray(film[span.start + len(span) // 2])
            if thumb_width != width:
                frame = frame.resize((thumb_width, thumb_height), Image.Resampling.LANCZOS)
            sheet.paste(frame, (left + (cell_width - thumb_width) // 2, top + MARGIN))
            text_top = top + MARGIN + thumb_height + MARGIN
            for i, line in enumerate(captions[k]):
                draw.text((left + MARGIN, text_top + i * line_height), line, fill="black" if i else "gray", font=font)
        top += row_height
    return sheet


def stacked_storyboards(boards: list[Path]) -> Image.Image:
    """The storyboards at `boards`, one under the other (a film in chapters)."""
    images = [Image.open(board).convert("RGB") for board in boards]
    sheet = Image.new("RGB", (max(b.width for b in images), sum(b.height for b in images)), "white")
    top = 0
    for image in images:
        sheet.paste(image, (0, top))
        top += image.height
    return sheet
