"""onnxruntime sessions as liser runs them: CPU, a fixed thread count, no busy-waiting between calls.

One place for the session options that predict, export and the waveform
graphs share, so a model is timed the way it is run.
"""

from __future__ import annotations

from pathlib import Path


def session(path: str | Path, threads: int | None = 1):
    """An onnxruntime CPU InferenceSession of the model at `path`.

    `threads`: intra-op threads (None: onnxruntime's default, every core),
    with one inter-op thread; spinning between calls is off, so an idle
    session costs no CPU. Raises what onnxruntime raises for an unloadable
    file (callers turn it into a LiserError naming the file).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
