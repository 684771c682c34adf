"""Drive fairseq's epoch iterators over an ``ecg_pretraining`` dataset as its trainer does, in a
process of its own, and print each epoch's batches as JSON.

The tests run this as a fresh interpreter rather than in the pytest process: data-loader workers
fork the process that makes them, and a long pytest process may hold state that a fork should
not inherit (CPython 3.11.7 has raised "AST constructor recursion depth mismatch" in such a
worker). fairseq-hydra-train, too, forks its workers from a fresh process.

Usage: python epoch_batches.py JOBS_JSON, a list of {"data", "epochs", "workers", "overrides",
"state"}; prints a list with, per job and epoch, the batches as [[item id, segment start], ...].
"""
import json
import sys

from omegaconf import OmegaConf


def pretraining_task(data: str, **overrides):
    from fairseq_ecg.tasks.ecg_pretraining import EcgPretrainingConfig, EcgPretrainingTask

    cfg = OmegaConf.structured(EcgPretrainingConfig(data=data, seed=1, segment_seconds=0.2, **overrides))
    task = EcgPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    return task


def epoch_batches(task, epoch: int, workers: int, state=None) -> list:
    """One epoch as fairseq's trainer gets it: a fresh ``task.get_batch_iterator`` for the epoch,
    then ``next_epoch_itr``. Each row as (item id, first value of lead I = the segment's start)."""
    epoch_itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=3, seed=1,
                                        num_workers=workers, epoch=epoch, required_batch_size_multiple=1)
    if state is not None:
        epoch_itr.load_state_dict(state)
    batches = []
    for batch in epoch_itr.next_epoch_itr(shuffle=True):
        source = batch["net_input"]["source"][:, 0, 0]
        batches.append([[int(i), int(s)] for i, s in zip(batch["id"].tolist(), source.long().tolist())])
    return batches


def main() -> None:
    results = []
    for job in json.loads(sys.argv[1]):
        task = pretraining_task(job["data"], **job.get("overrides", {}))
        results.append([epoch_batches(task, epoch, job["workers"], job.get("state")) for epoch in job["epochs"]])
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
