"""Provenance and safety: the invisible watermark in every frame, C2PA manifests on files,
and the operator's prompt policy.

    payload.py    what the mark carries (server, stream, minute) in 56 bits + CRC-16
    watermark.py  the spread-spectrum mark: Watermarker (embed), Detector (find)
    marking.py    StreamMarker: one server's marker, a payload per stream
    c2pa_sign.py  sign_mp4 / read_manifest, the operator's or a development signer
    policy.py     PromptPolicy: blocked words and patterns, refused as prompt_refused
    options.py    the flags `endless serve` and `endless render` share

Nothing here imports asyncio or aiortc: renders, the live worker and `endless verify`
share it.
"""
