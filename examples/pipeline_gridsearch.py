"""EigenPro inside a scikit-learn Pipeline, tuned with GridSearchCV.

python examples/pipeline_gridsearch.py
"""

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from eigenpro import EigenProClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)

pipeline = make_pipeline(MinMaxScaler(), EigenProClassifier(n_epochs=5, random_state=0))
grid = {
    "eigenproclassifier__kernel": ["gaussian", "laplacian"],
    "eigenproclassifier__bandwidth": [1.0, 2.0, 4.0],
}
search = GridSearchCV(pipeline, grid, cv=3, n_jobs=1)
search.fit(X_train, y_train)

print(f"best parameters: {search.best_params_}")
print(f"cross-validated accuracy: {search.best_score_:.4f}")
print(f"held-out test accuracy:   {search.score(X_test, y_test):.4f}")
