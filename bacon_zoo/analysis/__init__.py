"""`bacon-zoo analyze` (`analyze`) and every figure of the package (`plots`).

Import the submodules explicitly; both need the `plots` extra (matplotlib, scikit-learn), so this
package's own import stays free. The training-time diagnostics live with the trainer
(`bacon_zoo.train.diagnostics`).
"""
