import pytest

import mibench_lib.data as data
from mibench_lib.data import DATASETS, load_dataset


def test_registry_keys():
    assert DATASETS == {
        "mnist5k": data.mnist5k,
        "digits": data.digits,
        "celeba": data.celeba,
        "facescrub": data.facescrub,
        "imagefolder": data.imagefolder,
    }
    assert {"ImageSet", "MISplit", "ffhq", "load_dataset"} <= set(data.__all__)


def test_load_dataset_by_name(celeba_root):
    assert load_dataset("digits", resolution=4).image_shape == (1, 4, 4)
    s = load_dataset("celeba", root=celeba_root[0], resolution=4, num_private=2)
    assert s.name == "celeba" and s.num_classes == 2


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known datasets: \['celeba', "):
        load_dataset("mnist")


def test_unknown_keyword():
    with pytest.raises(
        TypeError, match=r"dataset 'digits' got unknown argument\(s\) \['reslution'\]"
    ):
        load_dataset("digits", reslution=8)
