"""The student model space, declared in NNI primitives: candidate ops, the space and its
children, and their analytic cost."""
