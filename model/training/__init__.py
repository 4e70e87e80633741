"""What ops/train_dit.py is made of: the pool of encoded sequences it draws from
(pool.py), the loss it minimises (objective.py), one optimizer step's parts (step.py) and
the run directory it resumes from (run_dir.py)."""
