"""The YAML recipes, shipped inside the package as `bacon_zoo.recipes` (pyproject's package-dir maps this
folder there), so `--recipe NAME` finds them in an installed wheel as in the checkout."""
