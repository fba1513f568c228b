"""Attacks and defences: ``attack_benchmark`` (attack x aggregator on real deltas; whole federations under attack
with ``--federated``) and ``secagg_compare`` (SecAgg+ against the plain round). ``lib/`` serves them: ``attacks``
(the attacks on a stack of honest updates), ``adversary`` (attacking nodes inside a real federation).

No other room imports this one.
"""
