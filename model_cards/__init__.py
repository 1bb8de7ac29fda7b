"""The zoo's bundled index and cards, shipped inside the package as `bacon_zoo.model_cards` (pyproject's
package-dir maps this folder there); `bacon_zoo.hub.zoo` reads them, `zoo add` writes elsewhere when
installed."""
