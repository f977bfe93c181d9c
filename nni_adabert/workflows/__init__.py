"""What the front ends run: search, retrain, evaluate, export and deploy a student, and
the one policy that decides whether a run resumes, is refused, or is already done."""
