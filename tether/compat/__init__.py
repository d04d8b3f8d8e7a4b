"""TRL 0.11's public PPO surface on tether's core, so a TRL program runs with its imports changed
(``from trl import ...`` → ``from tether import ...``, ``trl.core`` → ``tether.core``).

* ``models.py``  ``AutoModelForCausalLMWithValueHead``, ``create_reference_model``
* ``core.py``    ``LengthSampler``, ``respond_to_batch``, ``set_seed`` and TRL's masked statistics
* ``config.py``  TRL's ``PPOConfig`` fields (mapped, kept or warned about) and TRL 0.11's defaults
* ``trl_trainer.py``  TRL's ``PPOTrainer`` constructor order, ``dataloader``, ``accelerator``, stats keys

Nothing here runs PPO: ``tether.train`` does, the same for every program.
"""
