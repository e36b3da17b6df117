"""Beam's DaskRunner (Beam 2.77), fixed for the project's pipelines and given a cluster of its own.

``--runner DaskRunner`` on prepare, generate or fair_eval selects this runner
(``runners.pipeline_options`` maps the short name here; needs the ``dask`` extra,
``pip install -e '.[dask]'``):

    # a local dask.distributed cluster of 2 worker processes, started and stopped by the job
    fast-electra prepare --config configs/tiny.toml --runner DaskRunner --dask_workers 2
    # an existing cluster (dask scheduler / dask worker tcp://host:8786 on the machines)
    fast-electra generate --config configs/tiny.toml --runner DaskRunner \\
        --dask_client_address tcp://host:8786

Why a subclass and not Beam's runner as it is:

1. Multi-output ParDos (``.with_outputs``, e.g. prepare's ReadDocuments ``docs``/``reports``):
   Beam's translation puts the main and every tagged output into one dask bag with the tags
   stripped, so each consumer receives all outputs mixed (prepare fails at once). Here a bundle
   keeps the tags and each consumer, main input or side input, keeps only its own tag.
2. Outputs emitted in ``finish_bundle`` are collected: Beam reads the receivers before calling
   it and silently drops them (BatchElements / RunInference flush there).
3. The cluster: with no ``--dask_client_address`` (or ``--dask_scheduler_file``) Beam's
   ``Client()`` starts a default LocalCluster (one worker per core with several threads each,
   a dashboard on every interface) and never closes it. Here it is ``--dask_workers``
   single-threaded processes on 127.0.0.1 without dashboard, closed when the job ends, also
   on error; the client is closed too (otherwise it logs reconnect failures after the job).
4. Partitioning: Beam's translation only partitions at ``Create`` (128 elements a partition by
   default) and ``Reshuffle`` is a no-op, so a small job would be one task a stage on one
   worker. Without ``--dask_npartitions`` / ``--dask_partition_size`` the job uses
   2 x the number of workers partitions.
5. ``run`` blocks until the job is done (the cluster must outlive it) and then prints how many
   tasks each worker executed: one cheap call per worker (``executed_count`` before and after;
   on a shared cluster this also counts other clients' tasks in the meantime).

Known limits of Beam's dask translation that remain (docs/scaling.md, "Dask caveats"): a side input
is recomputed, with everything upstream of it, in each partition that reads it; ``setup`` /
``teardown`` run once per partition, not per worker; only the last transform and what feeds it
are computed; ``result.metrics()`` is not implemented.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os

import apache_beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.pvalue import TaggedOutput
from apache_beam.runners.common import DoFnInvoker
from apache_beam.runners.dask import dask_runner as _beam_dask
from apache_beam.runners.dask import transform_evaluator as _te
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.sideinputs import SideInputMap

_MAIN = "__main__"


class ClusterOptions(PipelineOptions):
    """The options this runner adds to Beam's DaskOptions (``--dask_client_address`` etc.)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--dask_workers", type=int, default=None,
            help="worker processes of the local dask cluster started when no "
                 "--dask_client_address is given (default: one per core)")


def start_launcher_helpers() -> None:
    """Start multiprocessing's resource tracker now, before the job. The local cluster's
    spawned processes start it on first use and it lives as long as the launcher, holding the
    stderr it was started with; during a job that is ``shard_sets.run_pipeline``'s traceback
    pipe (pipeline/worker_stderr.py), which then waits 10 s for the pipe to close after every
    dask job. Called by ``runners.pipeline_options`` when the DaskRunner is chosen."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def _tag_of(item) -> str:
    return item.tag if isinstance(item, TaggedOutput) else _MAIN


def _select(bag, tag: str | None):
    """The elements of one output of a ParDo's bag (``tag`` None: the main output)."""
    want = _MAIN if tag is None else tag
    return bag.filter(lambda x, want=want: _tag_of(x) == want).map(
        lambda x: x.value if isinstance(x, TaggedOutput) else x)


def apply_dofn_to_bundle(items, do_fn_invoker_args, do_fn_invoker_kwargs, tagged_receivers):
    """Beam's bundle function, but outputs are read after ``finish_bundle`` and keep their
    tags: main outputs are bare values (Beam's GroupByKey reads ``item[0]``), tagged ones
    ``TaggedOutput(tag, value)``."""
    invoker = DoFnInvoker.create_invoker(*do_fn_invoker_args, **do_fn_invoker_kwargs)
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    out = [TaggedOutput(v.tag, v.value.value) if isinstance(v, TaggedOutput) else v.value
           for v in tagged_receivers.values]
    tagged_receivers.values.clear()
    return out


class _TaggedParDo(_te.ParDo):
    """Beam's ParDo op with the same invoker arguments, bundled by ``apply_dofn_to_bundle``."""

    def apply(self, input_bag, side_inputs=None):
        from apache_beam import DoFn
        from apache_beam.runners.common import DoFnContext, DoFnSignature, _OutputHandler

        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        receivers = _te.OneReceiver()
        invoker_args = [
            DoFnSignature(transform.fn),
            _OutputHandler(window_fn=window_fn, main_receivers=receivers[None],
                           tagged_receivers=receivers, per_element_output_counter=None,
                           output_batch_converter=None, process_yields_batches=False,
                           process_batch_yields_elements=False),
        ]
        invoker_kwargs = dict(context=DoFnContext(transform.label, state=None),
                              side_inputs=side_inputs, input_args=list(args),
                              input_kwargs=kwargs, user_state_context=None,
                              bundle_finalizer_param=DoFn.BundleFinalizerParam())
        return input_bag.map(_te.get_windowed_value, window_fn).map_partitions(
            apply_dofn_to_bundle, invoker_args, invoker_kwargs, receivers)


TRANSLATIONS = dict(_te.TRANSLATIONS)
TRANSLATIONS[apache_beam.ParDo] = _TaggedParDo


class _DoneResult(PipelineResult):
    """The result of a job that ``run_pipeline`` already waited for."""

    def __init__(self):
        super().__init__(PipelineState.DONE)

    def wait_until_finish(self, duration=None):
        return self._state


def _executed_counts(client) -> dict[str, int]:
    return client.run(lambda dask_worker: dask_worker.state.executed_count)


class DaskRunner(_beam_dask.DaskRunner):
    """Beam's DaskRunner with tagged and finish_bundle outputs kept and a managed cluster."""

    @staticmethod
    def to_dask_bag_visitor(bag_kwargs=None) -> PipelineVisitor:
        """Beam's visitor, except that a consumer of a ParDo's output reads only its tag."""
        bag_kwargs = bag_kwargs or {}

        def bag_of(bags, pcoll):
            bag = bags.get(pcoll.producer)
            if bag is not None and isinstance(pcoll.producer.transform, apache_beam.ParDo):
                return _select(bag, pcoll.tag)
            return bag

        @dataclasses.dataclass
        class Visitor(PipelineVisitor):
            bags: dict = dataclasses.field(default_factory=collections.OrderedDict)

            def visit_transform(self, node) -> None:
                op = TRANSLATIONS.get(node.transform.__class__, _te.NoOp)(
                    node, bag_kwargs=bag_kwargs)
                kws = {"input_bag": None, "side_inputs": None}
                inputs = list(node.inputs)
                if inputs:
                    bag_inputs = []
                    for v in inputs:
                        if isinstance(v, pvalue.PBegin):
                            bag_inputs.append(None)
                        elif v.producer in self.bags:
                            bag_inputs.append(bag_of(self.bags, v))
                    # Flatten takes a list even of one input, as in Beam's visitor.
                    if len(bag_inputs) == 1 and not isinstance(op, _te.Flatten):
                        kws["input_bag"] = bag_inputs[0]
                    else:
                        kws["input_bag"] = bag_inputs
                if node.side_inputs:
                    kws["side_inputs"] = [
                        SideInputMap(type(si), si._view_options(),
                                     _te.DaskBagWindowedIterator(bag_of(self.bags, si.pvalue),
                                                                 si._window_mapping_fn))
                        for si in node.side_inputs]
                self.bags[node] = op.apply(**kws)

        return Visitor()

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        client_kwargs = options.view_as(_beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = _beam_dask.DaskOptions._extract_bag_kwargs(client_kwargs)
        cluster = None
        # distributed logs every connection and worker start at INFO (~60 lines a job): keep
        # its warnings, drop that chatter, unless the user configured the level.
        if logging.getLogger("distributed").level <= logging.INFO:
            logging.getLogger("distributed").setLevel(logging.WARNING)
        if not client_kwargs.get("address") and not client_kwargs.get("scheduler_file"):
            workers = options.view_as(ClusterOptions).dask_workers or os.cpu_count() or 1
            # Loopback only and no dashboard: nothing of the job listens on other interfaces.
            # The scheduler still serves its small HTTP endpoint (health, metrics), by default
            # on port 8787: a free port instead, so concurrent jobs do not collide.
            # One thread per worker: the DoFns (tokenizer, torch) are not written for threads
            # sharing a process, and processes are what spreads them over the cores.
            # The worker processes read their log level from dask's config at start-up: the
            # environment they inherit (restored after, so this process is left as it was).
            env = {"DASK_LOGGING__DISTRIBUTED": os.environ.get("DASK_LOGGING__DISTRIBUTED",
                                                                "warning")}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                cluster = ddist.LocalCluster(
                    n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, processes=True)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            client_kwargs["address"] = cluster.scheduler_address
        try:
            with ddist.Client(**client_kwargs) as client:
                if not bag_kwargs:
                    workers = len(client.scheduler_info()["workers"])
                    bag_kwargs = {"npartitions": max(2 * workers, 2)}
                before = _executed_counts(client)
                pipeline.replace_all(_beam_dask.dask_overrides())
                visitor = self.to_dask_bag_visitor(bag_kwargs)
                pipeline.visit(visitor)
                # As Beam: the last transform's bag holds the whole graph (see module docstring).
                graph = dask.optimize(list(visitor.bags.values())[-1])
                _beam_dask.DaskRunnerResult(client, client.compute(graph)).wait_until_finish()
                after = _executed_counts(client)
                counts = {w: n - before.get(w, 0) for w, n in sorted(after.items())}
                print(f"dask: {bag_kwargs}; tasks per worker: "
                      + ", ".join(f"{w} {n}" for w, n in counts.items()), flush=True)
        finally:
            if cluster is not None:
                cluster.close()
        return _DoneResult()
