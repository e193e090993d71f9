"""The report stage: tables, figures and text of the analysis notebook (``notebooks/20_analysis.ipynb``),
one module per section, and the pages around it. Display code only: it reads a loaded ``Run``
(``lib.results.run``) and never measures anything; what a section writes goes into the run folder.

Sections, in the order the report shows them:

- ``summary``: title, decisions, the latency budget, speedups, the latency–throughput trade-off
- ``quant``: quantization, its speed and accuracy cost
- ``energy``: energy and cost per inference
- ``load``: latency under load (closed loop, Poisson arrivals, dynamic batching, the queueing model)
- ``efficiency``: achieved FLOP/s against the device's peak
- ``kernels``: where the GPU time goes (CUPTI kernel profiles)
- ``latency``: latency and throughput vs batch size and shape, latency distributions
- ``stability``: host noise, flagged points, device health, memory and utilisation, failures and skips
- ``parity``: outputs against the reference
- ``measurements``: every point and mode
- ``data``: results as data (CSV/Parquet in the run folder), the executed notebooks
- ``environment``: engines and export, environment, parameters
- ``method``: how the numbers were measured

Shared by the sections: ``format`` (``table``, ``show``, number formats), ``points`` (series, modes,
usable points, the baseline), ``plots`` (the shared plots, the one palette and the plot style),
``markup`` (values made inert in Markdown). Pages: ``render`` (an executed notebook as one self-contained
HTML file), ``index`` (``reports/index.html``), ``compare`` (``make compare``: runs side by side).

Importing this package changes nothing global: the notebooks call ``plots.use_style()`` before plotting.
"""
