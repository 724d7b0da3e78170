"""What certkeeper shows operators: metrics, the status page, the textfile for node_exporter.

Data flows one way: the engine's outcomes (or a store read on a host) become ``CertRecord`` rows
(records.py); the Prometheus adapter (prom.py, the one module importing prometheus_client) and the
page (page.py) only read those rows.
"""
