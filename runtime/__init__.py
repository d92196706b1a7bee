"""The ground floor every script stands on: its settings read from its UPPER_CASE constants and
the command line (``settings``), and what a stage's ``main`` runs under (``stage``): one-line
errors and exit codes, device choice, seeding, thread caps. Imports nothing of the project."""
