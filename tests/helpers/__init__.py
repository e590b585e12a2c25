"""What the tests and benchmarks share: a real Label Studio and backend processes (ls_server), the in-memory Label
Studio (fake_label_studio), the scripted annotator, synthetic scenes, fault and queue kits, slow clients.

Imported one way everywhere, from the repository root: ``from tests.helpers.ls_server import BackendProcess``
(pytest puts the root on sys.path through ``pythonpath``; a benchmark or a worker subprocess puts it there itself).
"""
