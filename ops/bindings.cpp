// The Python module lite_detr._C. It has no functions: importing it loads this library, whose
// static initialisers register the lite_detr ops with torch.library (see ms_deform_attn.cpp).
#include <Python.h>

static struct PyModuleDef lite_detr_c_module = {
    PyModuleDef_HEAD_INIT, "_C", "Compiled ops of lite_detr, registered as torch.ops.lite_detr.*",
    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&lite_detr_c_module); }
