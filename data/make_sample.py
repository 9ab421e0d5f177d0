"""Write the shipped sample data of Maple Mall / 枫叶商城, a fictional online shop.

Everything here and in sample_more.py was written for this project. Running `python data/make_sample.py`
(Python 3.11, stdlib only, seeded) rewrites, byte for byte (`--check`: only compares):

    data/sample/faq.csv               instruction,response,intent,lang (one canonical answer per intent+lang)
    data/sample/dialogues.jsonl       the hand-written multi-turn chats {"messages": [...], "lang": ...}
    data/sample/more_dialogues.jsonl  more multi-turn chats: follow-ups, greetings, scripts (sample_more.py)
    data/sample/small/                the subset the tests train on (TUNING_SAMPLE=small, tuning/formats.py):
                                      the first 35 intents' written pairs and the hand-written dialogues
    data/lexicon/default.txt          the default sensitive-word list, word<TAB>category
    data/lexicon/allow.txt            innocent words that contain a listed word
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
import unicodedata
from pathlib import Path

from sample_more import (
    EN_CASUAL,
    EN_CLOSERS,
    EN_CONNECTIVES,
    EN_LEAD_INS,
    EN_OPENERS_ANY,
    EN_OPENERS_QUESTION,
    EN_TYPOS,
    MORE_QUESTIONS,
    NEW_INTENTS,
    RELATED,
    SCRIPTS_EN,
    SCRIPTS_ZH,
    ZH_CASUAL,
    ZH_CLOSERS,
    ZH_CONNECTIVES,
    ZH_LEAD_INS,
    ZH_OPENERS_QUESTION,
    ZH_OPENERS_STATEMENT,
    ZH_TYPOS,
)

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample"
SMALL = SAMPLE / "small"
LEXICON = HERE / "lexicon"

# intent -> lang -> (canonical answer, paraphrased questions). Chinese text uses ASCII , ? ! and
# ASCII single quotes around screen and button names, like the two rows taken from the origin
# document (order_status and return_policy, zh).
INTENTS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "order_status": {
        "zh": (
            "您可通过订单号在'我的订单'页面查询物流信息",
            [
                "我的订单什么时候到?",
                "我买的东西到哪了?",
                "怎么查看订单状态?",
                "我的订单发货了吗?",
                "下单好几天了,什么时候能送到?",
                "怎么知道我的订单进度?",
            ],
        ),
        "en": (
            "You can check the delivery status on the 'My Orders' page using your order number.",
            [
                "When will my order arrive?",
                "Where is my order?",
                "How can I check my order status?",
                "Has my order shipped yet?",
                "I ordered days ago, when will it get here?",
                "How do I see the progress of my order?",
            ],
        ),
    },
    "track_package": {
        "zh": (
            "在订单详情页点击'查看物流',即可看到快递公司和运单号并实时跟踪包裹",
            ["快递单号在哪里看?", "是哪家快递公司配送的?", "怎么跟踪我的包裹?", "运单号怎么查?", "能告诉我物流单号吗?"],
        ),
        "en": (
            "Open the order details and tap 'Track Package' to see the courier, the tracking number and live updates.",
            [
                "Where can I find my tracking number?",
                "Which courier is delivering my parcel?",
                "How do I track my package?",
                "Can you give me the tracking number?",
                "How can I follow my parcel in real time?",
            ],
        ),
    },
    "delivery_time": {
        "zh": (
            "付款后48小时内发货,大陆地区一般2-4天送达,偏远地区5-7天",
            ["一般几天能到货?", "发货后多久能收到?", "你们多久发货?", "送货需要多长时间?", "偏远地区要几天到?"],
        ),
        "en": (
            "Orders ship within 48 hours of payment and usually arrive in 2-4 days, or 5-7 days for remote areas.",
            [
                "How long does delivery take?",
                "How soon do you ship after I pay?",
                "How many days until I receive my order?",
                "What is the usual delivery time?",
                "How long does shipping take to remote areas?",
            ],
        ),
    },
    "shipping_fee": {
        "zh": (
            "单笔订单满99元包邮,不满99元收取8元运费",
            ["运费怎么算?", "满多少包邮?", "你们包邮吗?", "邮费多少钱?", "买一件东西要付运费吗?"],
        ),
        "en": (
            "Shipping is free on orders of 99 yuan or more; orders under 99 yuan pay a flat 8 yuan fee.",
            [
                "How much is shipping?",
                "Do you offer free shipping?",
                "What is the minimum order for free delivery?",
                "Is there a delivery charge?",
                "Do I pay shipping for a single item?",
            ],
        ),
    },
    "international_shipping": {
        "zh": (
            "目前仅配送中国大陆、香港和澳门地区,暂不支持其他国家和地区",
            ["可以寄到国外吗?", "你们支持国际配送吗?", "能发货到美国吗?", "海外地址可以下单吗?", "香港能送吗?"],
        ),
        "en": (
            "We currently deliver only to mainland China, Hong Kong and Macau. Other countries and regions are not supported yet.",
            [
                "Do you ship internationally?",
                "Can you deliver to the United States?",
                "Can I order with an overseas address?",
                "Do you deliver to Hong Kong?",
                "Which countries do you ship to?",
            ],
        ),
    },
    "change_address": {
        "zh": (
            "订单发货前可在订单详情页修改收货地址,已发货的订单请联系人工客服协助",
            [
                "怎么修改收货地址?",
                "地址填错了怎么办?",
                "下单后还能改地址吗?",
                "能帮我改一下收货地址吗?",
                "已经发货了还能改地址吗?",
            ],
        ),
        "en": (
            "Before shipping, you can edit the address on the order details page. For shipped orders, please contact a human agent.",
            [
                "How do I change my delivery address?",
                "I entered the wrong address, what should I do?",
                "Can I change the address after ordering?",
                "Can you update my shipping address?",
                "My order has shipped, can I still change the address?",
            ],
        ),
    },
    "cancel_order": {
        "zh": (
            "未发货的订单可在订单详情页直接取消,款项将原路退回",
            [
                "怎么取消订单?",
                "我不想要了,可以取消吗?",
                "下错单了能取消吗?",
                "取消订单后钱怎么退?",
                "付款后还能取消订单吗?",
            ],
        ),
        "en": (
            "Orders that have not shipped can be cancelled on the order details page, and the payment goes back to your original method.",
            [
                "How do I cancel my order?",
                "I changed my mind, can I cancel?",
                "I placed an order by mistake, can I cancel it?",
                "How do I get my money back after cancelling?",
                "Can I cancel after paying?",
            ],
        ),
    },
    "return_policy": {
        "zh": (
            "7天内可无理由退货,请在APP提交申请并寄回商品",
            ["如何退换货?", "怎么申请退货?", "可以无理由退货吗?", "退货流程是什么?", "买的东西不喜欢能退吗?"],
        ),
        "en": (
            "You can return items within 7 days for any reason. Submit a request in the app and send the item back.",
            [
                "What is your return policy?",
                "How do I return an item?",
                "Can I return something without a reason?",
                "What is the return process?",
                "I don't like what I bought, can I send it back?",
            ],
        ),
    },
    "refund_time": {
        "zh": (
            "仓库收到退货后1-3个工作日内审核,退款原路返回,一般3-5个工作日到账",
            ["退款多久到账?", "退款什么时候能收到?", "钱什么时候退给我?", "退货后多久退款?", "退款怎么还没到?"],
        ),
        "en": (
            "Once the warehouse receives your return we check it within 1-3 working days, and the refund reaches your original payment method in 3-5 working days.",
            [
                "How long does a refund take?",
                "When will I get my refund?",
                "When will my money be returned?",
                "How soon after a return do I get refunded?",
                "Why haven't I received my refund yet?",
            ],
        ),
    },
    "exchange": {
        "zh": (
            "签收后15天内可换尺码或颜色,在APP申请换货,每单可免费换货一次",
            ["怎么换货?", "尺码不合适可以换吗?", "能换个颜色吗?", "换货要付运费吗?", "换货怎么申请?"],
        ),
        "en": (
            "Within 15 days of delivery you can exchange for another size or colour in the app. One exchange per order is free.",
            [
                "How do I exchange an item?",
                "The size doesn't fit, can I swap it?",
                "Can I exchange for a different colour?",
                "Do I pay shipping for an exchange?",
                "How do I request an exchange?",
            ],
        ),
    },
    "damaged_item": {
        "zh": (
            "很抱歉!请在签收48小时内拍照并在'售后申请'中提交,我们会为您补发或退款",
            [
                "收到的商品坏了怎么办?",
                "包裹破损了怎么处理?",
                "东西有质量问题怎么办?",
                "商品到手就是坏的,能处理吗?",
                "收到的杯子碎了能赔吗?",
            ],
        ),
        "en": (
            "We're sorry! Please take photos within 48 hours of delivery and submit them under 'After-sales', and we will reship or refund.",
            [
                "My item arrived damaged, what should I do?",
                "The package was broken, what now?",
                "The product has a defect, how do I report it?",
                "Can I get a refund for a broken item?",
                "My cup arrived cracked, can you help?",
            ],
        ),
    },
    "wrong_item": {
        "zh": (
            "很抱歉发错了货,请在'售后申请'中上传照片,我们承担来回运费并尽快补发正确商品",
            [
                "收到的东西发错了怎么办?",
                "颜色和我买的不一样?",
                "尺码发错了怎么处理?",
                "包裹里不是我买的商品?",
                "你们发错货了,怎么换?",
            ],
        ),
        "en": (
            "Sorry for sending the wrong item. Upload photos under 'After-sales'; we cover shipping both ways and send the correct item quickly.",
            [
                "I received the wrong item, what should I do?",
                "The colour is different from what I ordered?",
                "You sent the wrong size, how do I fix it?",
                "This is not what I ordered?",
                "You shipped me someone else's product, can you fix it?",
            ],
        ),
    },
    "warranty": {
        "zh": (
            "电子产品享受一年保修,凭订单号在'售后申请'中选择保修即可",
            ["保修期多久?", "耳机坏了能保修吗?", "怎么申请保修?", "你们的电器有质保吗?", "过了退货期还能修吗?"],
        ),
        "en": (
            "Electronics come with a one-year warranty. Choose 'Warranty' under 'After-sales' and enter your order number.",
            [
                "How long is the warranty?",
                "My earbuds stopped working, are they under warranty?",
                "How do I make a warranty claim?",
                "Do your electronics have a warranty?",
                "Can I get a repair after the return period?",
            ],
        ),
    },
    "payment_methods": {
        "zh": (
            "支持支付宝、微信支付、银联卡及Visa和Mastercard信用卡,暂不支持货到付款",
            ["支持哪些付款方式?", "可以用微信支付吗?", "能用信用卡付款吗?", "支持支付宝吗?", "可以货到付款吗?"],
        ),
        "en": (
            "We accept Alipay, WeChat Pay, UnionPay cards and Visa or Mastercard credit cards. Cash on delivery is not available.",
            [
                "What payment methods do you accept?",
                "Can I pay with WeChat Pay?",
                "Do you take credit cards?",
                "Is Alipay supported?",
                "Can I pay cash on delivery?",
            ],
        ),
    },
    "change_payment": {
        "zh": (
            "付款前可在支付页面切换付款方式,已付款的订单无法更改,可取消后重新下单",
            [
                "怎么更换支付方式?",
                "付款方式选错了能改吗?",
                "已经付款了还能换支付方式吗?",
                "想用别的卡支付怎么操作?",
                "支付宝换成微信支付可以吗?",
            ],
        ),
        "en": (
            "Before paying you can switch methods on the payment page. Paid orders can't be changed, but you can cancel and order again.",
            [
                "How do I change my payment method?",
                "I picked the wrong payment option, can I change it?",
                "I already paid, can I switch payment method?",
                "I want to pay with a different card, how?",
                "Can I switch from Alipay to WeChat Pay?",
            ],
        ),
    },
    "installment": {
        "zh": (
            "单笔满600元可使用花呗或信用卡分期,支持3期、6期和12期",
            ["可以分期付款吗?", "支持花呗分期吗?", "信用卡能分几期?", "分期有什么条件?", "买手机能分12期吗?"],
        ),
        "en": (
            "Orders of 600 yuan or more can be paid in 3, 6 or 12 instalments with Huabei or a credit card.",
            [
                "Can I pay in instalments?",
                "Do you support Huabei instalments?",
                "How many instalments can I split my payment into?",
                "What are the requirements for instalment payments?",
                "Can I pay for a phone over 12 months?",
            ],
        ),
    },
    "invoice": {
        "zh": (
            "订单完成后在订单详情页点击'申请发票',电子发票会在1个工作日内开具",
            ["怎么开发票?", "可以开电子发票吗?", "发票在哪里申请?", "能开公司抬头的发票吗?", "发票多久能开好?"],
        ),
        "en": (
            "After the order is completed, tap 'Request Invoice' on the order details page. The e-invoice is issued within 1 working day.",
            [
                "How do I get an invoice?",
                "Can I get an electronic invoice?",
                "Where do I request an invoice?",
                "Can the invoice be issued to my company?",
                "How long does it take to issue an invoice?",
            ],
        ),
    },
    "coupon": {
        "zh": (
            "优惠券可在'领券中心'领取,结算时选择使用,每个订单限用一张",
            [
                "优惠券怎么用?",
                "在哪里领优惠券?",
                "一个订单能用几张优惠券?",
                "结算时怎么使用优惠券?",
                "有没有优惠券可以领?",
            ],
        ),
        "en": (
            "Collect coupons in the 'Coupon Centre' and pick one at checkout. Only one coupon can be used per order.",
            [
                "How do I use a coupon?",
                "Where can I get coupons?",
                "Can I use more than one coupon per order?",
                "How do I apply a coupon at checkout?",
                "Are there any coupons available?",
            ],
        ),
    },
    "points": {
        "zh": (
            "每消费1元得1积分,100积分可抵扣1元,积分可在'我的积分'页面查看",
            ["积分怎么获得?", "积分有什么用?", "积分可以抵现吗?", "怎么查看我的积分?", "多少积分能抵一块钱?"],
        ),
        "en": (
            "You earn 1 point per yuan spent, and 100 points take 1 yuan off. Check your balance on the 'My Points' page.",
            [
                "How do I earn points?",
                "What can I do with my points?",
                "Can points be used as cash?",
                "How do I check my points?",
                "How many points equal one yuan?",
            ],
        ),
    },
    "membership": {
        "zh": (
            "注册即成为普通会员,一年内累计消费满1000元自动升级金卡会员,享95折",
            ["怎么成为会员?", "会员有什么优惠?", "金卡会员怎么升级?", "会员要花钱买吗?", "会员等级怎么算?"],
        ),
        "en": (
            "Everyone who registers is a member. Spend 1000 yuan within a year to become a Gold member and get 5% off.",
            [
                "How do I become a member?",
                "What are the member benefits?",
                "How do I upgrade to Gold membership?",
                "Do I have to pay for membership?",
                "How are membership levels decided?",
            ],
        ),
    },
    "price_match": {
        "zh": (
            "购买后7天内本店降价,可在订单详情页申请退差价,暂不支持与其他平台比价",
            [
                "买完就降价了能退差价吗?",
                "你们有价格保护吗?",
                "降价了怎么申请补差价?",
                "别家更便宜你们能同价吗?",
                "价保期是多久?",
            ],
        ),
        "en": (
            "If our price drops within 7 days of purchase, request the difference on the order details page. We don't match other shops' prices.",
            [
                "The price dropped after I bought it, can I get the difference?",
                "Do you offer price protection?",
                "How do I claim a price difference?",
                "Another shop is cheaper, will you match it?",
                "How long is the price protection period?",
            ],
        ),
    },
    "out_of_stock": {
        "zh": (
            "商品缺货时可在商品页点击'到货通知',补货后我们会第一时间通知您",
            [
                "这个商品缺货了什么时候补货?",
                "没货了怎么办?",
                "售罄的商品还会再有吗?",
                "能提醒我到货吗?",
                "我要的尺码没有了怎么办?",
            ],
        ),
        "en": (
            "When an item is out of stock, tap 'Notify Me' on the product page and we'll tell you as soon as it is back.",
            [
                "When will this item be back in stock?",
                "The product is sold out, what can I do?",
                "Will sold-out items be restocked?",
                "Can you notify me when it's available?",
                "My size is out of stock, what should I do?",
            ],
        ),
    },
    "size_guide": {
        "zh": (
            "每个商品页都有'尺码表',建议量好尺寸后对照选择,介于两码之间可选大一码",
            ["怎么选尺码?", "尺码表在哪里看?", "我不知道该买什么码?", "鞋子偏大还是偏小?", "衣服尺码准吗?"],
        ),
        "en": (
            "Every product page has a 'Size Chart'. Compare it with your measurements, and if you're between sizes choose the larger one.",
            [
                "How do I choose my size?",
                "Where is the size chart?",
                "What size should I get?",
                "Do the shoes run large or small?",
                "Are your clothing sizes accurate?",
            ],
        ),
    },
    "gift_wrap": {
        "zh": (
            "结算时勾选'礼品包装'即可,每件加收5元,还可免费附上祝福卡片",
            ["可以礼品包装吗?", "能帮忙包装成礼物吗?", "礼品包装要多少钱?", "可以附一张贺卡吗?", "怎么选择礼品包装?"],
        ),
        "en": (
            "Tick 'Gift Wrap' at checkout for 5 yuan per item, and you can add a free greeting card.",
            [
                "Do you offer gift wrapping?",
                "Can you wrap it as a present?",
                "How much does gift wrapping cost?",
                "Can I include a greeting card?",
                "How do I choose gift wrap?",
            ],
        ),
    },
    "store_hours": {
        "zh": (
            "枫叶商城线上24小时营业,人工客服服务时间为每天9:00-21:00",
            ["你们几点上班?", "营业时间是什么?", "晚上可以下单吗?", "周末有客服吗?", "客服几点下班?"],
        ),
        "en": (
            "Maple Mall is open online 24 hours a day. Human agents are available every day from 9:00 to 21:00.",
            [
                "What are your opening hours?",
                "When is customer service available?",
                "Can I order at night?",
                "Is support open on weekends?",
                "What time does customer service close?",
            ],
        ),
    },
    "contact_human": {
        "zh": (
            "请在对话框输入'人工客服',每天9:00-21:00会有客服专员为您服务",
            [
                "怎么联系人工客服?",
                "能帮我转真人客服吗?",
                "能转人工吗?",
                "可以让客服专员跟我说话吗?",
                "机器人解决不了,怎么找人工?",
            ],
        ),
        "en": (
            "Type 'human agent' in the chat and a customer service specialist will help you between 9:00 and 21:00 every day.",
            [
                "How do I talk to a human?",
                "Can I speak to a real person?",
                "Can you transfer me to an agent?",
                "Is there a live agent available?",
                "The bot can't help me, how do I reach a person?",
            ],
        ),
    },
    "complaint": {
        "zh": (
            "非常抱歉给您带来不便,请在'我的-投诉与建议'中提交,我们会在24小时内回复",
            [
                "我要投诉怎么操作?",
                "在哪里提交投诉?",
                "对服务不满意怎么反馈?",
                "快递员态度很差可以投诉吗?",
                "投诉多久会有回复?",
            ],
        ),
        "en": (
            "We're sorry for the trouble. Please submit it under 'Me > Complaints & Feedback' and we will reply within 24 hours.",
            [
                "How do I make a complaint?",
                "Where can I file a complaint?",
                "I'm unhappy with the service, how do I give feedback?",
                "Can I complain about a rude courier?",
                "How long until you answer a complaint?",
            ],
        ),
    },
    "opening_account": {
        "zh": (
            "下载枫叶商城APP点击'注册',用手机号获取验证码即可免费注册",
            ["怎么注册账号?", "如何开通账户?", "新用户怎么注册?", "注册需要什么?", "注册账号要钱吗?"],
        ),
        "en": (
            "Download the Maple Mall app, tap 'Sign Up' and verify your mobile number with a code. Registration is free.",
            [
                "How do I create an account?",
                "How do I sign up?",
                "How can I open a new account?",
                "What do I need to register?",
                "Does it cost anything to register?",
            ],
        ),
    },
    "password_reset": {
        "zh": (
            "在登录页点击'忘记密码',通过手机验证码即可重新设置密码",
            ["忘记密码怎么办?", "如何重置密码?", "密码输错太多次登不上了?", "怎么修改登录密码?", "账号登不进去怎么办?"],
        ),
        "en": (
            "Tap 'Forgot Password' on the login page and verify with a code sent to your phone to set a new password.",
            [
                "I forgot my password, what should I do?",
                "How do I reset my password?",
                "I'm locked out after too many wrong passwords?",
                "How do I change my login password?",
                "I can't log in to my account, can you help?",
            ],
        ),
    },
    "account_delete": {
        "zh": (
            "在'设置-账号与安全-注销账号'中申请,15天冷静期后账号及数据将永久删除",
            ["怎么注销账号?", "如何删除我的账户?", "注销后数据会删除吗?", "不想用了能注销吗?", "注销账号需要多久?"],
        ),
        "en": (
            "Go to 'Settings > Account & Security > Delete Account'. After a 15-day cooling-off period, the account and its data are permanently deleted.",
            [
                "How do I delete my account?",
                "How can I close my account?",
                "Will my data be deleted if I close my account?",
                "I don't want to use the app anymore, can I remove my account?",
                "How long does account deletion take?",
            ],
        ),
    },
    "privacy": {
        "zh": (
            "您的信息仅用于订单处理和配送,我们不会出售给第三方,详见'设置-隐私政策'",
            [
                "你们会泄露我的个人信息吗?",
                "我的数据安全吗?",
                "你们怎么使用我的信息?",
                "会把我的电话卖给别人吗?",
                "隐私政策在哪里看?",
            ],
        ),
        "en": (
            "Your information is used only to process and deliver orders and is never sold to third parties. See 'Settings > Privacy Policy'.",
            [
                "Will you share my personal information?",
                "Is my data safe with you?",
                "How do you use my information?",
                "Do you sell my phone number to others?",
                "Where can I read your privacy policy?",
            ],
        ),
    },
    "newsletter_unsubscribe": {
        "zh": (
            "在'设置-消息通知'中关闭营销推送即可,促销短信可回复TD退订",
            [
                "怎么取消推送消息?",
                "不想收到促销短信怎么办?",
                "如何退订营销信息?",
                "广告通知太多了怎么关?",
                "怎么退订你们的短信?",
            ],
        ),
        "en": (
            "Turn off marketing messages under 'Settings > Notifications'. To stop promotional text messages, reply TD to any of them.",
            [
                "How do I unsubscribe from your newsletter?",
                "How do I stop promotional messages?",
                "How can I opt out of marketing texts?",
                "You send too many notifications, how do I turn them off?",
                "How do I stop your SMS ads?",
            ],
        ),
    },
    "greeting": {
        "zh": (
            "您好,欢迎来到枫叶商城!我是智能客服,请问有什么可以帮您?",
            ["在吗?", "有人在吗?", "你好,请问有客服吗?", "您好,可以咨询一下吗?", "你好,能帮我个忙吗?"],
        ),
        "en": (
            "Hello and welcome to Maple Mall! I'm the virtual assistant. How can I help you today?",
            [
                "Hello, is anyone there?",
                "Hi, can I ask a question?",
                "Hey, are you there?",
                "Good morning, can you help me?",
                "Hi, is this customer service?",
            ],
        ),
    },
    "pre_order": {
        "zh": (
            "预售商品先付定金再付尾款,发货日期见商品页,因个人原因未付尾款的定金不退",
            ["预售是怎么回事?", "预售商品什么时候发货?", "定金可以退吗?", "尾款什么时候付?", "预售和现货有什么区别?"],
        ),
        "en": (
            "For pre-orders, pay a deposit first and the balance later. The ship date is on the product page. Deposits are non-refundable if the balance isn't paid.",
            [
                "How do pre-orders work?",
                "When will my pre-order ship?",
                "Can I get my deposit back?",
                "When do I pay the rest of a pre-order?",
                "What's the difference between a pre-order and an in-stock item?",
            ],
        ),
    },
    "missing_package": {
        "zh": (
            "如显示已签收但未收到,请先查看快递柜或代收点,仍找不到请提交'售后申请',我们会协助核实",
            [
                "显示已签收但我没收到?",
                "包裹丢了怎么办?",
                "快递说送到了可是没看到?",
                "物流显示签收了,东西呢?",
                "我的快递被别人签收了怎么办?",
            ],
        ),
        "en": (
            "If it shows delivered but you don't have it, check parcel lockers and pickup points first. Still missing? Submit an 'After-sales' request and we'll investigate.",
            [
                "It says delivered but I didn't receive it?",
                "My package is lost, what do I do?",
                "The courier says it was delivered but I can't find it?",
                "Tracking shows signed for, where is my parcel?",
                "Someone else signed for my package, what now?",
            ],
        ),
    },
}

ITEMS = {
    "zh": ["蓝牙耳机", "运动鞋", "羽绒服", "保温杯", "双肩包", "台灯", "电饭煲", "羊毛围巾"],
    "en": [
        "wireless earbuds",
        "running shoes",
        "down jacket",
        "thermos bottle",
        "backpack",
        "desk lamp",
        "rice cooker",
        "wool scarf",
    ],
}

# Multi-turn chats. Each is a list of alternating user/assistant lines, first the user's.
# Placeholders: {o} an order number, {item} a product, {<intent>} that intent's canonical answer.
DIALOGUES_ZH: list[list[str]] = [
    [
        "我想退货",
        "好的,请问是哪个订单?请提供订单号",
        "订单号 {o}",
        "已查到订单{o}中的{item},仍在7天无理由退货期内,请在APP提交退货申请并寄回商品",
        "退款多久能到账?",
        "{refund_time}",
        "寄回的运费谁出?",
        "无理由退货的寄回运费由您承担,如是质量问题则由我们承担",
    ],
    [
        "我的订单什么时候到?",
        "{order_status}",
        "订单号是{o},能帮我看看吗?",
        "订单{o}已于昨天发货,预计2-4天内送达,请留意快递通知",
        "那快递单号在哪里看?",
        "{track_package}",
    ],
    [
        "我地址填错了",
        "请问订单号是多少?发货前可以直接修改",
        "{o}",
        "订单{o}还未发货,您可以在订单详情页点击'修改地址'更新收货地址",
        "改完需要重新付款吗?",
        "不需要,修改地址不影响付款,订单会按新地址发出",
    ],
    [
        "我想取消订单",
        "请提供需要取消的订单号",
        "{o}",
        "订单{o}尚未发货,已为您提交取消申请,款项将原路退回",
        "多久能退回来?",
        "取消后的退款一般3-5个工作日原路到账",
    ],
    [
        "能取消订单{o}吗?",
        "订单{o}已经发货,无法直接取消;您可以签收后申请退货,7天内可无理由退货",
        "那我拒收可以吗?",
        "可以,拒收后包裹退回仓库,我们收到后为您原路退款",
        "拒收的话运费要我出吗?",
        "拒收无需您支付额外费用,退款会按实付金额全额退回",
    ],
    [
        "收到的{item}坏了",
        "{damaged_item}",
        "我已经拍了照片,选补发还是退款好?",
        "都可以,选择补发我们会在48小时内重新发出;选择退款则原路退回",
        "那我选补发,订单号{o}",
        "好的,已为订单{o}登记补发,新的包裹发出后您会收到物流通知",
    ],
    [
        "你们发错货了",
        "{wrong_item}",
        "我买的是黑色,收到的是白色,订单{o}",
        "抱歉!已为订单{o}登记换发黑色,请把白色商品寄回,运费由我们承担",
        "需要多久能收到正确的?",
        "正确商品会在48小时内发出,一般2-4天送达",
    ],
    [
        "鞋子小了能换吗?",
        "{exchange}",
        "订单号{o},想换大一码",
        "订单{o}在换货期内,请在APP申请换货并选择大一码,本次换货免运费",
        "如果大一码也没货呢?",
        "若该尺码缺货,可以改为退货退款,或在商品页点击'到货通知'等待补货",
    ],
    [
        "我的退款怎么还没到?",
        "请提供退货的订单号,我帮您查一下",
        "{o}",
        "仓库已于前天收到订单{o}的退货并审核通过,退款将在3-5个工作日内原路到账",
        "我是用信用卡付的,也是退到信用卡吗?",
        "是的,退款会原路退回您付款时使用的信用卡",
    ],
    [
        "怎么开发票?",
        "{invoice}",
        "能开公司抬头吗?",
        "可以,申请时选择'企业'并填写公司名称和税号即可",
        "订单{o}还没确认收货,现在能开吗?",
        "订单完成后才能申请发票,确认收货后即可在订单详情页申请",
    ],
    [
        "优惠券怎么用?",
        "{coupon}",
        "那能和积分一起用吗?",
        "可以,优惠券和积分可以在同一订单中同时使用",
        "积分怎么抵?",
        "{points}",
    ],
    ["怎么成为会员?", "{membership}", "金卡会员的折扣能和优惠券一起用吗?", "可以,结算时先按95折计算,再使用优惠券抵扣"],
    [
        "运费怎么算?",
        "{shipping_fee}",
        "我买了85元,还差多少包邮?",
        "还差14元即可包邮,可以再挑一件小商品凑单",
        "凑单后几天能到?",
        "{delivery_time}",
    ],
    ["可以寄到日本吗?", "{international_shipping}", "那寄到香港要几天?", "香港地区一般5-7天送达,运费规则与大陆相同"],
    [
        "可以分期付款吗?",
        "{installment}",
        "我的订单{o}是800元,可以分6期吗?",
        "可以,订单{o}满600元,付款时在支付页选择6期即可",
        "有手续费吗?",
        "手续费以花呗或发卡银行的规定为准,支付页会显示每期金额",
    ],
    [
        "忘记密码怎么办?",
        "{password_reset}",
        "收不到验证码怎么办?",
        "请确认手机信号正常并检查是否被拦截,60秒后可重新获取;仍收不到请输入'人工客服'",
    ],
    [
        "怎么注销账号?",
        "{account_delete}",
        "我还有没用完的积分怎么办?",
        "注销后积分和优惠券会一并清空,建议先使用完再申请注销",
        "冷静期内可以反悔吗?",
        "可以,15天内重新登录即可撤销注销申请",
    ],
    [
        "机器人解决不了,怎么找人工?",
        "{contact_human}",
        "现在晚上10点了还有人吗?",
        "抱歉,人工客服已下班,您可以先留言,明天9:00后会有专员回复您",
    ],
    [
        "我要投诉快递员",
        "非常抱歉!请问是哪个订单?",
        "{o},快递员没联系我就把包裹放门口了",
        "已记录订单{o}的问题并反馈给快递公司,您也可在'我的-投诉与建议'中补充说明,我们会在24小时内回复",
        "东西没少,只是希望以后注意",
        "明白,我们会要求快递公司改进,感谢您的反馈",
    ],
    ["这件{item}什么时候补货?", "{out_of_stock}", "已经点了,大概要等多久?", "补货时间一般为1-2周,具体以到货通知为准"],
    [
        "怎么选尺码?",
        "{size_guide}",
        "我平时穿M码,这件羽绒服偏大吗?",
        "这款版型偏宽松,平时穿M码的话选M码即可",
        "不合适能换吗?",
        "{exchange}",
    ],
    [
        "我昨天买的{item}今天降价了",
        "请提供订单号,我帮您看看是否在价保期内",
        "{o}",
        "订单{o}在购买后7天内,可在订单详情页申请退差价,差价将退回原支付账户",
        "差价多久到账?",
        "申请通过后,差价一般1-3个工作日原路退回",
    ],
    [
        "可以礼品包装吗?",
        "{gift_wrap}",
        "已经下单了还能加吗?",
        "订单发货前可以联系人工客服添加礼品包装,已发货则无法添加",
        "订单号{o}",
        "订单{o}还未发货,已为您备注礼品包装,5元费用会在发货前提醒您支付",
    ],
    [
        "显示已签收但我没收到?",
        "{missing_package}",
        "快递柜和代收点都看过了,订单{o}",
        "已为订单{o}登记核实,我们会联系快递公司,24小时内给您答复",
        "如果真的丢了呢?",
        "如确认丢件,我们会为您免费补发或全额退款",
    ],
    [
        "耳机坏了能保修吗?",
        "{warranty}",
        "买了8个月了,订单{o}",
        "订单{o}仍在一年保修期内,提交保修申请后请寄回商品,检测后为您维修或更换",
        "寄回运费谁出?",
        "保修期内的寄回运费由我们承担,提交申请时可预约免费上门取件",
    ],
    ["预售是怎么回事?", "{pre_order}", "尾款什么时候付?", "尾款支付时间会在商品页标明,届时APP会提醒您付款"],
    [
        "不想收到促销短信怎么办?",
        "{newsletter_unsubscribe}",
        "退订后还会收到物流通知吗?",
        "会的,物流和订单通知不受影响,只停止营销消息",
    ],
    [
        "你们会泄露我的个人信息吗?",
        "{privacy}",
        "那我能删除保存的收货地址吗?",
        "可以,在'我的-收货地址'中选择地址并删除即可",
    ],
    [
        "在吗?",
        "{greeting}",
        "我想查一下订单{o}",
        "订单{o}正在派送中,预计今天送达,您也可在'我的订单'页面查看物流信息",
        "好的,谢谢",
        "不客气,祝您购物愉快!",
    ],
    [
        "如何退换货?",
        "{return_policy}",
        "超过7天了还能退吗?",
        "超过7天不支持无理由退货,如有质量问题可在'售后申请'中提交",
        "是质量问题,订单{o}",
        "已为订单{o}开通质量问题售后,请上传照片,审核通过后由我们承担运费",
    ],
    ["怎么注册账号?", "{opening_account}", "新用户有优惠吗?", "有的,新用户注册后可在'领券中心'领取新人优惠券,首单可用"],
    [
        "支持哪些付款方式?",
        "{payment_methods}",
        "我选了支付宝,想改成信用卡",
        "{change_payment}",
        "订单{o}还没付款",
        "那您回到订单{o}的支付页面,重新选择信用卡即可",
    ],
    ["你们几点上班?", "{store_hours}", "那我晚上11点下单,什么时候发货?", "{delivery_time}"],
]

DIALOGUES_EN: list[list[str]] = [
    [
        "I want to return something.",
        "Sure. Which order is it? Please give me the order number.",
        "It's {o}.",
        "Order {o} ({item}) is still within the 7-day return window. Submit a return request in the app and send the item back.",
        "How long does the refund take after that?",
        "{refund_time}",
        "Who pays for the return shipping?",
        "For returns without a reason you pay the return shipping; for quality problems we cover it.",
    ],
    [
        "Where is my order?",
        "{order_status}",
        "The order number is {o}.",
        "Order {o} left our warehouse yesterday and should arrive within 2-4 days.",
        "Which courier is bringing it?",
        "{track_package}",
    ],
    [
        "I typed the wrong address.",
        "What is the order number? If it hasn't shipped, you can still change it.",
        "{o}",
        "Order {o} hasn't shipped yet, so you can tap 'Edit Address' on the order details page.",
        "Will that delay the delivery?",
        "No, the order will ship as planned, to the new address.",
    ],
    [
        "Can I cancel order {o}?",
        "Order {o} hasn't shipped, so I've submitted the cancellation. The payment goes back to your original method.",
        "How long until I see the money?",
        "Refunds for cancelled orders usually arrive in 3-5 working days.",
    ],
    [
        "I need to cancel my order.",
        "Please share the order number and I'll check.",
        "{o}",
        "Order {o} has already shipped, so it can't be cancelled. You can refuse the delivery or return it within 7 days for any reason.",
        "If I refuse it, do I still get a full refund?",
        "Yes. Once the parcel is back at our warehouse, we refund the full amount to your original payment method.",
    ],
    [
        "My {item} arrived damaged.",
        "{damaged_item}",
        "I've uploaded the photos for order {o}. Can you send a new one?",
        "Done. A replacement for order {o} will ship within 48 hours and you'll get a tracking update.",
    ],
    [
        "I got the wrong item.",
        "{wrong_item}",
        "I ordered a size M but got an L. Order {o}.",
        "Sorry about that! I've arranged a size M for order {o}. Please send the L back; we cover the shipping.",
        "Do I need to pay for the return label?",
        "No, return shipping is free for wrong items. A prepaid label comes with the after-sales request.",
    ],
    [
        "The shoes are too small. Can I swap them?",
        "{exchange}",
        "Order {o}, I want one size up.",
        "Order {o} is within the exchange period. Request an exchange in the app and choose one size up; this exchange is free.",
    ],
    [
        "Why haven't I received my refund yet?",
        "Could you tell me the order number of the return?",
        "{o}",
        "The warehouse received the return for order {o} two days ago and approved it. The refund will reach you within 3-5 working days.",
        "I paid by credit card. Does it go back to the card?",
        "Yes, the refund goes back to the same credit card you paid with.",
    ],
    [
        "How do I get an invoice?",
        "{invoice}",
        "Can it be issued to my company?",
        "Yes. When requesting, choose 'Company' and enter the company name and tax number.",
        "Order {o} hasn't been completed yet. Can I request it now?",
        "Invoices can be requested once the order is completed. Confirm receipt first, then request it on the order details page.",
    ],
    [
        "How do I use a coupon?",
        "{coupon}",
        "Can I combine it with points?",
        "Yes, a coupon and points can be used together in the same order.",
        "How do points work?",
        "{points}",
    ],
    [
        "What are the member benefits?",
        "{membership}",
        "I've spent 900 yuan this year. How much more for Gold?",
        "Just 100 yuan more within the year and you'll be upgraded to Gold automatically.",
    ],
    [
        "Do you offer free shipping?",
        "{shipping_fee}",
        "My cart is 92 yuan.",
        "You're 7 yuan away from free shipping. Adding a small item would save you the 8 yuan fee.",
        "And how long will delivery take?",
        "{delivery_time}",
    ],
    [
        "Do you ship internationally?",
        "{international_shipping}",
        "What about Macau? How long does that take?",
        "Yes, we deliver to Macau. It usually takes 5-7 days, with the same shipping fee rules.",
    ],
    [
        "Can I pay in instalments?",
        "{installment}",
        "My cart is 750 yuan. Can I do 12 instalments?",
        "Yes. Your order is over 600 yuan, so you can choose 12 instalments on the payment page.",
        "Is there any fee?",
        "Any fee depends on Huabei or your card issuer. The payment page shows the amount per instalment.",
    ],
    [
        "I forgot my password, what should I do?",
        "{password_reset}",
        "The code never arrives.",
        "Please check your signal and message filters, then request a new code after 60 seconds. If it still fails, type 'human agent'.",
    ],
    [
        "How do I delete my account?",
        "{account_delete}",
        "What happens to my points?",
        "Points and coupons are cleared when the account is deleted, so use them first.",
        "Can I change my mind during the cooling-off period?",
        "Yes. Log in again within 15 days and the deletion request is cancelled.",
    ],
    [
        "Can I speak to a real person?",
        "{contact_human}",
        "It's 10 pm now. Is anyone there?",
        "Sorry, human agents are offline now. Leave a message and a specialist will reply after 9:00 tomorrow.",
    ],
    [
        "I want to complain about the courier.",
        "I'm sorry to hear that. Which order was it?",
        "{o}. He left the parcel outside without telling me.",
        "I've logged this for order {o} and passed it to the courier company. You can add details under 'Me > Complaints & Feedback'; we reply within 24 hours.",
        "Nothing is missing, I just want it not to happen again.",
        "Understood. We'll ask the courier company to improve. Thank you for the feedback.",
    ],
    [
        "When will the {item} be back in stock?",
        "{out_of_stock}",
        "Done. How long does a restock usually take?",
        "Restocks usually take 1-2 weeks; the notification will tell you when it's back.",
    ],
    [
        "How do I choose my size?",
        "{size_guide}",
        "I usually wear M. Does this down jacket run large?",
        "This jacket has a relaxed fit, so your usual M should be fine.",
        "And if it doesn't fit?",
        "{exchange}",
    ],
    [
        "I bought the {item} yesterday and today it's cheaper.",
        "Please share the order number and I'll check the price protection period.",
        "{o}",
        "Order {o} is within 7 days of purchase, so you can request the difference on the order details page.",
        "When will I get the difference?",
        "Once approved, the difference goes back to your original payment method within 1-3 working days.",
    ],
    [
        "Do you offer gift wrapping?",
        "{gift_wrap}",
        "I already placed order {o}. Can I still add it?",
        "Order {o} hasn't shipped, so I've noted gift wrap for it. You'll be asked to pay the 5 yuan fee before it ships.",
    ],
    [
        "It says delivered but I didn't receive it?",
        "{missing_package}",
        "I checked the lockers already. Order {o}.",
        "I've opened an investigation for order {o}. We'll contact the courier and reply within 24 hours.",
        "What if it's really lost?",
        "If the parcel is confirmed lost, we'll send a free replacement or give you a full refund.",
    ],
    [
        "My earbuds stopped working, are they under warranty?",
        "{warranty}",
        "I bought them 8 months ago, order {o}.",
        "Order {o} is still within the one-year warranty. After you submit the claim, send the earbuds back and we'll repair or replace them.",
        "Who pays for shipping?",
        "During the warranty period we pay the return shipping, and you can book a free pickup when you submit the claim.",
    ],
    [
        "How do pre-orders work?",
        "{pre_order}",
        "When do I pay the balance?",
        "The balance payment window is shown on the product page, and the app will remind you when it opens.",
    ],
    [
        "How do I stop promotional messages?",
        "{newsletter_unsubscribe}",
        "Will I still get delivery updates?",
        "Yes. Order and delivery notifications continue; only marketing messages stop.",
    ],
    [
        "Is my data safe with you?",
        "{privacy}",
        "Can I remove a saved address?",
        "Yes. Go to 'Me > Addresses', choose the address and delete it.",
    ],
    [
        "Hi, is this customer service?",
        "{greeting}",
        "I'd like to check order {o}.",
        "Order {o} is out for delivery and should arrive today. You can also follow it on the 'My Orders' page.",
        "Great, thanks!",
        "You're welcome. Enjoy your shopping!",
    ],
    [
        "What is your return policy?",
        "{return_policy}",
        "It's been 10 days. Can I still return it?",
        "Returns for any reason end after 7 days, but quality problems can still be reported under 'After-sales'.",
        "It is a quality problem. Order {o}.",
        "I've opened a quality after-sales case for order {o}. Upload photos, and once approved we cover the shipping.",
    ],
    [
        "What payment methods do you accept?",
        "{payment_methods}",
        "I picked Alipay by mistake. Can I pay by card instead?",
        "{change_payment}",
        "I haven't paid for order {o} yet.",
        "Then just reopen the payment page of order {o} and choose your card.",
    ],
    [
        "How do I create an account?",
        "{opening_account}",
        "Is there anything for new users?",
        "Yes. New users can collect a welcome coupon in the 'Coupon Centre' for their first order.",
    ],
    ["What are your opening hours?", "{store_hours}", "If I order at 11 pm, when will it ship?", "{delivery_time}"],
]

# The project's own default list. abuse: insults and profanity (policy mask); fraud: scam, phishing
# and illegal-trade phrases (policy block); violence: threats (policy block). Latin-script words
# only match on word boundaries, so "ass" stays out of "password" and "class".
LEXICON_ENTRIES: dict[str, list[str]] = {
    "abuse": [
        "idiot",
        "idiots",
        "stupid",
        "moron",
        "imbecile",
        "dumb",
        "dumbass",
        "damn",
        "dammit",
        "ass",
        "asshole",
        "jackass",
        "jerk",
        "bastard",
        "bitch",
        "crap",
        "shit",
        "bullshit",
        "fuck",
        "fucking",
        "fucker",
        "wtf",
        "stfu",
        "loser",
        "scumbag",
        "screw you",
        "shut up",
        "傻逼",
        "煞笔",
        "傻B",
        "白痴",
        "滚蛋",
        "滚开",
        "蠢货",
        "笨蛋",
        "混蛋",
        "王八蛋",
        "贱人",
        "脑残",
        "智障",
        "废物",
        "垃圾",
        "去死",
        "他妈的",
        "操你妈",
        "尼玛",
        "nmsl",
        "狗东西",
        "神经病",
        "傻瓜",
        "死全家",
    ],
    "fraud": [
        "send me your password",
        "give me your password",
        "share your verification code",
        "fake invoice",
        "fake reviews",
        "order brushing",
        "money laundering",
        "safe account",
        "click this link to claim",
        "pay with gift cards",
        "刷单",
        "刷好评",
        "代开发票",
        "发票代开",
        "假发票",
        "洗钱",
        "套现",
        "信用卡套现",
        "花呗套现",
        "安全账户",
        "把验证码发给我",
        "把验证码告诉我",
        "告诉我你的密码",
        "把密码发给我",
        "点击链接领取",
        "兼职刷单",
        "出售银行卡",
        "收购银行卡",
    ],
    "violence": [
        "kill you",
        "i will kill",
        "murder you",
        "stab you",
        "shoot you",
        "bomb",
        "blow up",
        "burn down",
        "杀了你",
        "弄死你",
        "砍死你",
        "捅死你",
        "打死你",
        "炸了你们",
        "炸弹",
        "炸药",
        "放火烧",
        "烧了你们",
        "血洗",
        "同归于尽",
        "找人收拾你",
        "我知道你住哪",
    ],
}

# Innocent words that contain a listed word. Latin ones are covered by word boundaries already and
# are listed as documentation and as a second guard; the Chinese ones are what this list is for.
ALLOW = [
    "assistant",
    "class",
    "passport",
    "password",
    "assess",
    "bass",
    "embassy",
    "scrap",
    "dumbbell",
    "bath bomb",
    "bombastic",
    "stable",
    "jerky",
    "垃圾袋",
    "垃圾桶",
    "垃圾分类",
    "垃圾处理器",
    "废物利用",
    "废物回收",
    "傻瓜相机",
    "傻瓜式操作",
    "水滚开",
    "滚开水",
    "神经病学",
    "去死皮",
    "去死角",
    "牙刷单支",
    "牙刷单价",
    "卡路里炸弹",
    "浴盐炸弹",
    "沐浴炸弹",
]

LEXICON_HEADER = """\
# Maple Mall / 枫叶商城 default sensitive-word list, written for this project (Apache-2.0).
# Regenerated by data/make_sample.py; edit the lists there.
#
# Format: one entry per line, `word<TAB>category`. Lines starting with # are comments; blank
# lines are ignored. Matching folds case and width and ignores spaces and punctuation, so
# "傻 逼" and "ＳＴＵＰＩＤ" match; Latin-script words must stand on word boundaries ("ass" does not
# match "password"). Innocent words that contain a listed word go in allow.txt.
#
# Categories (default policies from BOT_FILTER_POLICY):
#   abuse     insults and profanity                  -> mask (the words are replaced by *)
#   fraud     scam, phishing and illegal-trade text  -> block (canned reply, no model call)
#   violence  threats of harm                        -> block
"""

ALLOW_HEADER = """\
# Maple Mall / 枫叶商城 allowlist, written for this project (Apache-2.0).
# Regenerated by data/make_sample.py; edit the list there.
#
# One word per line; lines starting with # are comments. A match of the sensitive-word list that
# lies inside one of these words is ignored, e.g. 垃圾 in 垃圾袋, 去死 in 去死皮, 刷单 in 牙刷单支.
"""


def faq_rows() -> list[dict[str, str]]:
    """The first 35 intents' hand-written pairs: the test subset's FAQ (data/sample/small/faq.csv)."""
    rows = []
    for intent, langs in INTENTS.items():
        for lang in ("zh", "en"):
            answer, questions = langs[lang]
            rows += [{"instruction": q, "response": answer, "intent": intent, "lang": lang} for q in questions]
    return rows


def dialogues(rng: random.Random, used: set[str]) -> list[dict]:
    """The hand-written dialogues (data/sample/dialogues.jsonl, in the subset too)."""
    out = []
    for lang, templates in (("zh", DIALOGUES_ZH), ("en", DIALOGUES_EN)):
        answers = {intent: langs[lang][0] for intent, langs in INTENTS.items()}
        for template in templates:
            slots = answers | {"o": order_number(rng, used), "item": rng.choice(ITEMS[lang])}
            messages = [
                {"role": ("user", "assistant")[i % 2], "content": line.format(**slots)}
                for i, line in enumerate(template)
            ]
            out.append({"messages": messages, "lang": lang})
    rng.shuffle(out)
    return out


def order_number(rng: random.Random, used: set[str]) -> str:
    order = f"A{rng.randint(10000, 99999)}"
    while order in used:
        order = f"A{rng.randint(10000, 99999)}"
    used.add(order)
    return order


# --- the full sample: more phrasings, more intents, decorated questions and more multi-turn chats

ALL_INTENTS = INTENTS | NEW_INTENTS
UNDECORATED = {"greeting", "thanks"}  # "你好,谢谢" and "Hi, hello" read like nobody writes
FAQ_VARIANT_SHARE = 0.85  # of the written questions get one decorated variant...
FAQ_SECOND_VARIANT_SHARE = 0.3  # ...and this share a second one
PAIRS_PER_RELATED = 3  # two-question chats per RELATED pair and language
SCRIPT_INSTANCES = 8  # chats per script, each with its own choice of wordings
TRAILING = re.compile(r"[\s?？!！.。,，~～]+$")
# English first words that stay capitalised after an opener or a connective.
KEEP_CAPITAL = {"I", "I'm", "I've", "I'd", "I'll", "Alipay", "WeChat", "UnionPay", "Visa", "Mastercard", "Huabei"}
KEEP_CAPITAL |= {"Maple", "Macau", "Hong", "Spring", "Chinese", "National", "May", "Singles'", "Gold", "Order"}


def normal(text: str) -> str:
    """As bot.cache.normalise_question: the form the split and the dataset compare questions in."""
    return TRAILING.sub("", " ".join(unicodedata.normalize("NFKC", text).casefold().split()))


def written(intent: str, lang: str) -> list[str]:
    return ALL_INTENTS[intent][lang][1] + MORE_QUESTIONS.get(intent, {}).get(lang, [])


def lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    return text if first in KEEP_CAPITAL else text[:1].lower() + text[1:]


def opener(question: str, lang: str, rng: random.Random) -> str:
    asks = question.endswith("?")
    if lang == "zh":
        return rng.choice(ZH_OPENERS_QUESTION if asks else ZH_OPENERS_STATEMENT) + question
    return rng.choice(EN_OPENERS_ANY + (EN_OPENERS_QUESTION if asks else [])) + lower_first(question)


def closer(question: str, lang: str, rng: random.Random) -> str:
    if lang == "en":
        return question + rng.choice(EN_CLOSERS)
    return question + ("" if question.endswith(("?", "!")) else ",") + rng.choice(ZH_CLOSERS)


def casual(question: str, lang: str, rng: random.Random) -> str | None:
    """The spoken form (咋, 啥 / u, pls, dont), or None where the question has nothing to change."""
    if lang == "zh":
        text = question
        for formal, spoken in ZH_CASUAL:
            if formal == "吗?" and "怎么" in question:
                continue  # "咋...不?" is no question anybody asks
            text = text.replace(formal, spoken, 1)
    else:
        text = question
        for pattern, spoken in EN_CASUAL:
            text = re.sub(pattern, spoken, text, count=1, flags=re.IGNORECASE)
        text = text.lower().rstrip(".")
    return text if normal(text) != normal(question) else None


def typo(question: str, lang: str, rng: random.Random) -> str | None:
    """One slip of the keyboard, or None where none fits."""
    slips = [(right, wrong) for right, wrong in (ZH_TYPOS if lang == "zh" else EN_TYPOS) if right in question]
    if not slips:
        return None
    right, wrong = rng.choice(slips)
    return question.replace(right, wrong, 1)


def variant(question: str, lang: str, rng: random.Random, seen: set[str]) -> str | None:
    """One decorated form of `question` not in `seen` (normalised), or None."""
    kinds = ["opener", "opener", "opener", "closer", "closer", "both", "casual", "casual", "typo", "typo"]
    first = rng.choice(kinds)
    for kind in [first, *rng.sample(sorted(set(kinds)), 5)]:
        if kind == "opener":
            text: str | None = opener(question, lang, rng)
        elif kind == "closer":
            text = closer(question, lang, rng)
        elif kind == "both":
            text = closer(opener(question, lang, rng), lang, rng)
        elif kind == "casual":
            text = casual(question, lang, rng)
        else:
            text = typo(question, lang, rng)
        if text is not None and normal(text) not in seen:
            return text
    return None


def full_faq_rows(rng: random.Random) -> list[dict[str, str]]:
    """Every intent's written questions (the subset's first, so the split treats them alike), then their
    decorated variants; grouped by intent and language."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for intent in ALL_INTENTS:
        for lang in ("zh", "en"):
            for question in written(intent, lang):
                if normal(question) in seen:
                    raise ValueError(f"{intent}/{lang}: {question!r} is written twice")
                seen.add(normal(question))
    for intent in ALL_INTENTS:
        for lang in ("zh", "en"):
            questions = list(written(intent, lang))
            if intent not in UNDECORATED:
                for question in written(intent, lang):
                    for share in (FAQ_VARIANT_SHARE, FAQ_SECOND_VARIANT_SHARE):
                        if rng.random() < share and (text := variant(question, lang, rng, seen)):
                            seen.add(normal(text))
                            questions.append(text)
            answer = ALL_INTENTS[intent][lang][0]
            rows += [{"instruction": q, "response": answer, "intent": intent, "lang": lang} for q in questions]
    return rows


def join(connectives: list[str], question: str, lang: str, rng: random.Random) -> str:
    """A follow-up question joined to the chat ("那...?", "And ...?"); some connectives only fit questions."""
    asks = question.endswith("?")
    fitting = [c for c in connectives if asks or c not in ("那", "And ", "Another question: ")]
    connective = rng.choice(fitting)
    return connective + (lower_first(question) if lang == "en" else question)


def more_dialogues(rng: random.Random, used: set[str]) -> list[dict]:
    """Two related questions in a row, a greeting then a question, and the multi-turn scripts."""
    out: list[dict] = []
    prompts: set[tuple[str, ...]] = set()

    def add(lang: str, lines: list[str]) -> None:
        key = tuple(normal(line) for line in lines[:-1:2])
        if key not in prompts:
            prompts.add(key)
            out.append(
                {
                    "messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(lines)],
                    "lang": lang,
                }
            )

    for lang in ("zh", "en"):
        answers = {intent: langs[lang][0] for intent, langs in ALL_INTENTS.items()}
        connectives = ZH_CONNECTIVES if lang == "zh" else EN_CONNECTIVES
        for first, second in RELATED:
            for _ in range(PAIRS_PER_RELATED):
                asked = rng.choice(written(first, lang))
                if rng.random() < 0.3:
                    asked = opener(asked, lang, rng)
                then = join(connectives, rng.choice(written(second, lang)), lang, rng)
                add(lang, [asked, answers[first], then, answers[second]])
        lead_ins = ZH_LEAD_INS if lang == "zh" else EN_LEAD_INS
        for intent in ALL_INTENTS:
            if intent in UNDECORATED:
                continue
            lead_in, question = rng.choice(lead_ins), rng.choice(written(intent, lang))
            if lang == "en" and lead_in.endswith((": ", ", ")):
                question = lower_first(question)
            add(lang, [rng.choice(written("greeting", lang)), answers["greeting"], lead_in + question, answers[intent]])
        for script in SCRIPTS_ZH if lang == "zh" else SCRIPTS_EN:
            choices: set[tuple[int, ...]] = set()
            for _ in range(SCRIPT_INSTANCES * 4):  # tries; short scripts have fewer distinct wordings
                if len(choices) == SCRIPT_INSTANCES:
                    break
                picked = tuple(rng.randrange(len(turn)) for turn in script[::2])
                if picked in choices:
                    continue
                choices.add(picked)
                slots = answers | {"o": order_number(rng, used), "item": rng.choice(ITEMS[lang])}
                lines = [
                    (turn if isinstance(turn, str) else turn[picked[i // 2]]).format(**slots)
                    for i, turn in enumerate(script)
                ]
                add(lang, lines)
    rng.shuffle(out)
    return out


def csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["instruction", "response", "intent", "lang"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def jsonl_text(chats: list[dict]) -> str:
    return "".join(json.dumps(chat, ensure_ascii=False) + "\n" for chat in chats)


def files() -> dict[Path, str]:
    """Every generated file and its text."""
    used: set[str] = set()
    core = dialogues(random.Random(0), used)
    more = more_dialogues(random.Random(1), used)
    lines = [LEXICON_HEADER]
    for category, words in LEXICON_ENTRIES.items():
        lines.append(f"\n# {category}\n")
        lines += [f"{word}\t{category}\n" for word in words]
    return {
        SAMPLE / "faq.csv": csv_text(full_faq_rows(random.Random(2))),
        SAMPLE / "dialogues.jsonl": jsonl_text(core),
        SAMPLE / "more_dialogues.jsonl": jsonl_text(more),
        SMALL / "faq.csv": csv_text(faq_rows()),
        SMALL / "dialogues.jsonl": jsonl_text(core),
        LEXICON / "default.txt": "".join(lines),
        LEXICON / "allow.txt": ALLOW_HEADER + "\n" + "".join(w + "\n" for w in ALLOW),
    }


def main() -> None:
    """Write the files; with --check, write nothing and exit 1 when any file differs from what it would be."""
    stale = []
    for path, text in files().items():
        if "--check" in sys.argv[1:]:
            if not path.exists() or path.read_bytes() != text.encode():
                stale.append(str(path.relative_to(HERE)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    if stale:
        sys.exit(f"not as data/make_sample.py writes them: {', '.join(stale)} (run python data/make_sample.py)")


if __name__ == "__main__":
    main()
