"""The active-learning engine: models, data, losses, acquisition, training, the learner and one round's job.

No Flask, no HTTP, no Label Studio: the simulator and the backend both drive it."""
