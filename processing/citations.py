"""BibTeX entries of the PNG benchmark and of EPNG: the citations of the dataset card, the model card and the AR
metric module."""

PNG_CITATION = r"""@inproceedings{gonzalez2021png,
  title     = {Panoptic Narrative Grounding},
  author    = {Gonz{\'a}lez, Cristina and Ayobi, Nicol{\'a}s and Hern{\'a}ndez, Isabela and Hern{\'a}ndez, Jos{\'e} and
               Pont-Tuset, Jordi and Arbel{\'a}ez, Pablo},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2021}
}"""

EPNG_CITATION = r"""@inproceedings{wang2023epng,
  title     = {Towards Real-Time Panoptic Narrative Grounding by an End-to-End Grounding Network},
  author    = {Wang, Haowei and Ji, Jiayi and Zhou, Yiyi and Wu, Yongjian and Sun, Xiaoshuai},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {37},
  year      = {2023},
  doi       = {10.1609/aaai.v37i2.25350}
}"""
