"""prepare and generate on the project's DaskRunner, on real dask.distributed clusters of 2 worker
processes on 127.0.0.1: the same bytes as Beam's local runner, and worker-side user errors
reach the user as on the local runner."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

import pytest

pytest.importorskip("distributed")

from apache_beam.options.pipeline_options import StandardOptions  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from pipeline.generate import run as generate  # noqa: E402
from pipeline.prepare import main as prepare_main  # noqa: E402
from pipeline.prepare import run as prepare  # noqa: E402
from pipeline.runners import pipeline_options  # noqa: E402
from tests.helpers import (  # noqa: E402
    IN_MEMORY,
    gen_argv,  # noqa: E402
    prepare_argv,
)

# slow: real dask.distributed clusters of 2 worker processes, one with a worker killed.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# Files that must match byte for byte (the manifests hold the absolute output folder).
CORPUS_FILES = ["part-*.parquet", "tokenizer.model", "unigram_counts.npy"]


def digests(root, patterns) -> dict[str, str]:
    out = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
           for pattern in patterns for p in root.glob(pattern)}
    assert out, f"nothing matches {patterns} in {root}"
    return out


@pytest.fixture(scope="module")
def cluster():
    """A cluster the test owns (the runner connects by address), so it can also be inspected."""
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, processes=True,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as c:
        yield c


def test_prepare_on_own_local_cluster_matches_local_runner(prepared, corpus_inputs, tmp_path,
                                                           capsys):
    # No address: the runner starts (and stops) its own 2-process cluster.
    corpus_dir, manifest, _ = prepared
    inputs_dir, _ = corpus_inputs
    out = tmp_path / "corpus"
    got = prepare(prepare_argv(inputs_dir, out, "--runner", "DaskRunner", "--dask_workers", "2"))
    assert digests(out, CORPUS_FILES) == digests(corpus_dir, CORPUS_FILES)
    assert got["num_tokens"] == manifest["num_tokens"]
    printed = capsys.readouterr().out
    assert "dask: {'npartitions': 4}; tasks per worker: tcp://127.0.0.1:" in printed


def test_generate_on_cluster_matches_local_runner(prepared, cluster, tmp_path):
    corpus_dir, _, _ = prepared
    sets = ["corruption.replacement=uniform", "generate.epochs=2", "generate.device=cpu"]
    generate(gen_argv(corpus_dir, tmp_path / "local", *sets, beam=IN_MEMORY))
    generate(gen_argv(corpus_dir, tmp_path / "dask", *sets,
                      beam=["--runner", "DaskRunner",
                            "--dask_client_address", cluster.scheduler_address]))
    local = digests(tmp_path / "local", ["**/part-*.parquet"])
    assert len(local) >= 2
    assert digests(tmp_path / "dask", ["**/part-*.parquet"]) == local


def test_worker_side_user_error_exits_2(prepared, cluster, tmp_path, capsys):
    # Blank input with a given tokenizer: nothing fails before the pipeline; the worker that
    # finalises the corpus raises PrepareError, which must come back as a clean exit 2.
    corpus_dir, _, _ = prepared
    blank = tmp_path / "in"
    blank.mkdir()
    (blank / "a.txt").write_text("  \n\n \t \n\n")
    argv = prepare_argv(blank, tmp_path / "corpus",
                        "--set", f"tokenizer.model={corpus_dir / 'tokenizer.model'}",
                        "--runner", "DaskRunner",
                        "--dask_client_address", cluster.scheduler_address)
    assert prepare_main(argv) == 2
    assert "error: the inputs hold no text to tokenise" in capsys.readouterr().err


def test_runner_short_name_maps_to_project_runner():
    opts = pipeline_options(["--runner", "DaskRunner", "--dask_workers", "3"])
    assert opts.view_as(StandardOptions).runner == "pipeline.dask_runner.DaskRunner"
    assert opts.get_all_options()["dask_workers"] == 3
    opts = pipeline_options(["--runner=dask"])
    assert opts.view_as(StandardOptions).runner == "pipeline.dask_runner.DaskRunner"


def test_generate_survives_a_killed_worker(prepared, cluster, tmp_path):
    # kill -9 of one worker process mid-job (its pid from this test's own cluster, nothing
    # else): the nanny restarts it, the scheduler reruns the lost tasks, the bytes are the same.
    corpus_dir, _, _ = prepared
    sets = ["corruption.replacement=uniform", "generate.epochs=16", "generate.device=cpu"]
    generate(gen_argv(corpus_dir, tmp_path / "local", *sets, beam=IN_MEMORY))
    local = digests(tmp_path / "local", ["**/part-*.parquet"])
    with Client(cluster.scheduler_address) as client:
        pids = list(client.run(os.getpid).values())  # the worker processes of this cluster
    assert len(pids) == 2
    errors = []

    def job():
        try:
            generate(gen_argv(corpus_dir, tmp_path / "dask", *sets,
                              beam=["--runner", "DaskRunner",
                                    "--dask_client_address", cluster.scheduler_address]))
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 60
    while (len(list((tmp_path / "dask").glob("**/part-*.parquet"))) < len(local) // 4
           and thread.is_alive() and time.time() < deadline):
        time.sleep(0.05)
    assert thread.is_alive(), "generate finished before a worker could be killed"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors
    assert digests(tmp_path / "dask", ["**/part-*.parquet"]) == local


def test_generate_epoch_ranges_on_cluster(prepared, cluster, tmp_path):
    """Epoch 0 on the local runner, epochs 1..2 on Dask (one job per epoch, each sealing its
    epoch): the set the local runner writes at once, plan and manifest included."""
    corpus_dir, _, _ = prepared
    sets = ["corruption.replacement=uniform", "generate.epochs=3", "generate.device=cpu"]
    whole = generate(gen_argv(corpus_dir, tmp_path / "local", *sets, beam=IN_MEMORY))
    first = generate([*gen_argv(corpus_dir, tmp_path / "dask", *sets, beam=IN_MEMORY),
                      "--epochs", "0:1"])
    assert first["complete"] is False
    got = generate([*gen_argv(corpus_dir, tmp_path / "dask", *sets,
                              beam=["--runner", "DaskRunner",
                                    "--dask_client_address", cluster.scheduler_address]),
                    "--epochs", "1:3"])
    assert got == whole
    patterns = ["**/part-*.parquet", "**/_SEALED.json", "plan.json"]
    assert digests(tmp_path / "dask", patterns) == digests(tmp_path / "local", patterns)
