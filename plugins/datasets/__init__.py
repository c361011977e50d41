"""Built-in dataset plugins: scikit-learn's digits, synthetic spirals, and a user's own npz or csv files."""
