"""A two-tower model's text tower (model.py), its tokenizer (tokenizer.py) and `load_text_model` (loading.py)."""
