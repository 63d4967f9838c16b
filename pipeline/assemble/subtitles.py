"""`film.srt`: each clip's prompt, shown while the film shows that clip's frames."""


def srt_timestamp(seconds: float) -> str:
    """`HH:MM:SS,mmm`, rounded to the millisecond."""
    hours, rest = divmod(round(seconds * 1000), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d},{rest % 1000:03d}"


def subtitles(prompts: list[str], spans: list[range], fps: float) -> str:
    """SRT text: cue k shows `prompts[k]` while the film shows the frames `spans[k]`."""
    cues = [
        f"{k + 1}\n{srt_timestamp(span.start / fps)} --> {srt_timestamp(span.stop / fps)}\n{' '.join(prompt.split())}\n"
        for k, (prompt, span) in enumerate(zip(prompts, spans, strict=True))
    ]
    return "\n".join(cues)
