"""fedgin on Flower (``flwr``): the sites as SuperNodes, the server as a ServerApp, over real processes.

- :mod:`.client_app`: the ``ClientApp`` wrapping :class:`fedgin.fl.client.Client` (one per SuperNode).
- :mod:`.server_app`: the ``ServerApp`` with a FedAvg/FedProx strategy that aggregates with
  :func:`fedgin.fl.aggregate.fedavg` and writes the same run directory as the built-in engine.
- :mod:`.secagg`: secure aggregation (Flower's SecAgg+) of a round's training, ``flower.secagg``.
- :mod:`.records`: weights, metrics and the run config in Flower's records.
- :mod:`.project`: the Flower app project (``pyproject.toml``) that carries a run's config to ``flwr run``.
- :mod:`.certs`: a CA, the SuperLink's TLS certificate and the SuperNodes' authentication keys.
- :mod:`.launcher`: a SuperLink and one SuperNode per site on 127.0.0.1 (``fedgin train --engine flower``).

Importing this package needs ``flwr`` (``pip install fedgin[fl]``).
"""
