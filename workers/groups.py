"""A batch's jobs grouped for the worker: jobs that share every pass over a model, typed by
what they compute."""

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.jobs import ExplanationJob, VisualizationJob
from workers.pipeline import BatchKey, PreparedJob
from workers.store import StreamJob


@dataclass(frozen=True)
class Entry:
    """One stream entry in this worker's hands."""

    model_id: str
    entry_id: str
    message: ExplanationJob | VisualizationJob

    def stream_job(self) -> StreamJob:
        return StreamJob(self.model_id, self.entry_id, self.message.job_id, self.message.reply_to)


JobT = TypeVar("JobT", PreparedJob, VisualizationJob)
# Visualizations share a pass when they share a model and `VisualizationParams.batch_key()`.
VisualizationKey = tuple[str, tuple[object, ...]]


@dataclass(frozen=True)
class GroupedJob(Generic[JobT]):
    """A job in a group: the entry it came in and what the group's computation reads of it."""

    entry: Entry
    job: JobT


@dataclass
class JobGroup(Generic[JobT]):
    """Jobs of one model that share every pass over it, in the order they were read."""

    model_id: str
    members: list[GroupedJob[JobT]] = field(default_factory=list)

    def halves(self) -> tuple["JobGroup[JobT]", "JobGroup[JobT]"]:
        middle = len(self.members) // 2
        return (
            JobGroup(self.model_id, self.members[:middle]),
            JobGroup(self.model_id, self.members[middle:]),
        )


@dataclass
class BatchGroups:
    """A batch's claimed jobs in groups: explanations by `BatchKey`, visualizations apart."""

    explanations: dict[BatchKey, JobGroup[PreparedJob]] = field(default_factory=dict)
    visualizations: dict[VisualizationKey, JobGroup[VisualizationJob]] = field(default_factory=dict)

    def add_explanation(self, entry: Entry, job: PreparedJob) -> None:
        group = self.explanations.setdefault(BatchKey.of(job.message), JobGroup(entry.model_id))
        group.members.append(GroupedJob(entry, job))

    def add_visualization(self, entry: Entry, job: VisualizationJob) -> None:
        key = (entry.model_id, job.visualization.batch_key())
        group = self.visualizations.setdefault(key, JobGroup(entry.model_id))
        group.members.append(GroupedJob(entry, job))
