"""Zero-shot classification with a two-tower (image-text) model: class names and prompt templates
(`prompts`), the class embeddings folded into an ordinary classifier head (`head`), and that head written
as a weights file of its own (`classifier`)."""
