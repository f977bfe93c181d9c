"""What the front ends run: search, retrain, evaluate, export and deploy a student (whether a
run resumes, is refused or is already done is :mod:`nni_adabert.runs`'s to decide)."""
