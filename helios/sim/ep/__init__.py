"""``serving=ep``: expert-parallel serving with data-parallel attention ranks.

- :mod:`~helios.sim.ep.engine`: :class:`EpSimulation`, arrivals and the step loop;
- :mod:`~helios.sim.ep.scheduler`: continuous batching with chunked prefill per rank;
- :mod:`~helios.sim.ep.step`: a step as a task graph (dispatch, grouped GEMM, combine);
- :mod:`~helios.sim.ep.roofline`: compute times of attention, GEMMs and the LM head;
- :mod:`~helios.sim.ep.metrics`: TTFT, TPOT, throughput, goodput and step figures.
"""
