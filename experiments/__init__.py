"""The Sacred experiments, one module per study (``import experiments.expt_dln``).

Each module still runs as a script, ``python experiments/expt_dln.py with ...``; as a
package they can be imported by tests, docs/gen_config_keys.py and the generators
without editing ``sys.path``.
"""
