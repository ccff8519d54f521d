"""The supervisor holds every source behind one interface: built from the config, started, watched, stopped."""

import threading

from monitor.batching import FrameQueue
from monitor.config import parse_config
from monitor.records import Frame
from monitor.sources.base import Source
from monitor.sources.camera import CameraSource
from monitor.sources.folder import FolderSource
from monitor.sources.quarantine import Quarantine
from monitor.sources.supervisor import SourceContext, SourceSupervisor
from monitor.threads import StoppableThread


class _Scripted(Source):
    """A source whose thread does what the test says: run until stopped, crash, or finish."""

    def __init__(self, name: str, behaviour: str) -> None:
        self.name = name
        self.acknowledged: list[Frame] = []
        self._finished = False
        self._behaviour = behaviour
        self.thread = StoppableThread(f"scripted-{name}", self._run)

    def _run(self, stop: threading.Event) -> None:
        if self._behaviour == "crash":
            return
        if self._behaviour == "finish":
            self._finished = True
            return
        stop.wait()

    def start(self) -> None:
        self.thread.start()

    @property
    def finished(self) -> bool:
        return self._finished

    def acknowledge(self, frame: Frame, anomaly: bool | None = None) -> None:
        self.acknowledged.append(frame)


def _started(**behaviours: str) -> SourceSupervisor:
    supervisor = SourceSupervisor({n: _Scripted(n, b) for n, b in behaviours.items()})
    supervisor.start()
    for source in supervisor.sources.values():
        if source._behaviour != "run":
            source.thread.join(5)
    return supervisor


def test_the_supervisor_builds_each_kind_of_source_from_the_config(tmp_path):
    config = parse_config({"sources": [{"name": "f", "folder": "in"}, {"name": "c", "camera": "rtsp://h/s"}]},
                          tmp_path / "c.yaml")
    ctx = SourceContext(FrameQueue(4), Quarantine(tmp_path / "q"), tmp_path / "state", tmp_path / "j.jsonl",
                        lambda _event: None)
    supervisor = SourceSupervisor.from_config(config, ctx)
    assert list(supervisor.sources) == ["f", "c"]
    assert isinstance(supervisor.sources["f"], FolderSource)
    assert isinstance(supervisor.sources["c"], CameraSource)
    supervisor.close()


def test_a_source_whose_thread_ended_unasked_is_dead():
    supervisor = _started(ok="run", bad="crash")
    assert supervisor.dead() == ["bad"]
    supervisor.stop()
    assert supervisor.join() == []


def test_a_finished_source_is_not_dead():
    supervisor = _started(ok="run", video="finish")
    assert supervisor.dead() == []
    supervisor.stop()
    supervisor.join()


def test_a_stopped_source_is_not_dead():
    supervisor = _started(ok="run")
    supervisor.stop()
    supervisor.join()
    assert supervisor.dead() == []


def test_acknowledge_reaches_the_source_of_the_frame_only():
    import numpy as np

    supervisor = _started(a="run", b="run")
    frame = Frame(source="b", image=np.zeros((2, 2), np.uint8), frame_time=0.0)
    supervisor.acknowledge(frame)
    supervisor.acknowledge(Frame(source="gone", image=frame.image, frame_time=0.0))  # removed source: ignored
    assert supervisor.sources["b"].acknowledged == [frame]
    assert supervisor.sources["a"].acknowledged == []
    supervisor.stop()
    supervisor.join()
