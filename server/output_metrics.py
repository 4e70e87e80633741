"""Prometheus metrics of the outputs (WHEP, HLS, recordings, RTMP pushes, OSC), registered
in the server's own registry beside server/metrics.py's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

WHEP_REFUSALS = ("unauthorized", "forbidden", "bad_sdp", "unknown_stream", "too_many_viewers")
PUSH_STATES = ("connecting", "live", "retrying", "stopped")
OSC_RESULTS = ("ok", "error")


class OutputMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.whep_sessions = Counter("endless_whep_sessions", "WHEP sessions opened", registry=r)
        self.whep_active = Gauge("endless_whep_active", "WHEP sessions open now", registry=r)
        self.whep_refused = Counter(
            "endless_whep_refused", "WHEP offers refused", ["reason"], registry=r
        )
        self.hls_segments = Counter(
            "endless_hls_segments", "HLS segments cut from the H.264 encode", registry=r
        )
        self.hls_requests = Counter(
            "endless_hls_requests", "HLS playlist and segment requests", ["kind"], registry=r
        )
        self.hls_active = Gauge("endless_hls_active", "Streams being segmented for HLS", registry=r)
        self.recordings = Counter("endless_recordings", "Recordings started", registry=r)
        self.recordings_active = Gauge(
            "endless_recordings_active", "Recordings being written now", registry=r
        )
        self.recorded_frames = Counter(
            "endless_recorded_frames", "Encoded frames written to recordings", registry=r
        )
        self.pushes = Counter("endless_pushes", "RTMP pushes started", registry=r)
        self.push_states = Counter(
            "endless_push_states", "RTMP push state changes", ["state"], registry=r
        )
        self.pushes_active = Gauge("endless_pushes_active", "RTMP pushes running now", registry=r)
        self.pushed_frames = Counter(
            "endless_pushed_frames", "Encoded frames sent to RTMP servers", registry=r
        )
        self.osc_messages = Counter(
            "endless_osc_messages", "OSC messages received", ["result"], registry=r
        )
        for reason in WHEP_REFUSALS:
            self.whep_refused.labels(reason)
        for kind in ("playlist", "segment"):
            self.hls_requests.labels(kind)
        for state in PUSH_STATES:
            self.push_states.labels(state)
        for result in OSC_RESULTS:
            self.osc_messages.labels(result)
